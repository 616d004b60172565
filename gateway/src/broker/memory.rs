use std::sync::Arc;

use async_trait::async_trait;
use protocol::Publication;

use super::{Broker, BrokerError, Receipt};
use crate::hub::Table;

/// The single-node broker: a publish is a local delivery.
pub struct MemoryBroker {
    table: Arc<Table>,
}

impl MemoryBroker {
    pub fn new(table: Arc<Table>) -> Self {
        Self { table }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, pubs: Vec<Publication>) -> Result<Receipt, BrokerError> {
        let mut r = Receipt {
            nodes: 0,
            sessions: Some(0),
        };
        for p in &pubs {
            r.nodes += u64::from(self.table.has_interest(&p.channel));
            r.sessions = r.sessions.map(|s| s + self.table.deliver(p) as u64);
        }
        Ok(r)
    }

    fn interest_changed(&self, _channel: &Arc<str>) {}

    fn is_ready(&self) -> bool {
        true
    }
}
