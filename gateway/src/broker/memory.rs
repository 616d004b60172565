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
    async fn publish(&self, p: Publication) -> Result<Receipt, BrokerError> {
        let had_interest = self.table.has_interest(&p.channel);
        let n = self.table.deliver(&p) as u64;
        Ok(Receipt {
            nodes: u64::from(had_interest),
            sessions: Some(n),
        })
    }

    fn interest_changed(&self, _channel: &Arc<str>) {}

    fn is_ready(&self) -> bool {
        true
    }
}
