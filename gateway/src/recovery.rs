//! Deciding what a resuming subscriber gets: the missed publications in order, and
//! whether that is everything (`recovered`) or the client must refetch state.

use protocol::Publication;
use protocol::frame::Since;
use publisher::HistoryPage;

/// The outcome of a resume attempt on one channel.
#[derive(Debug, PartialEq)]
pub struct Resume {
    /// `None` when no resume was asked for.
    pub recovered: Option<bool>,
    /// Publications to send before live ones, oldest first.
    pub replay: Vec<Publication>,
}

/// Compares where the client left off with what history holds. Never a silent
/// partial replay: anything short of a contiguous run from `since + 1` to the
/// latest offset in the same epoch is reported as not recovered.
pub fn assess(since: Option<&Since>, page: HistoryPage) -> Resume {
    let Some(since) = since else {
        return Resume {
            recovered: None,
            replay: Vec::new(),
        };
    };
    // An empty epoch is a client that saw the channel before it had any history:
    // everything in the current epoch is new to it.
    let fresh = since.epoch.is_empty() && since.offset == 0;
    if (!fresh && since.epoch != page.epoch) || since.offset > page.top {
        return Resume {
            recovered: Some(false),
            replay: Vec::new(),
        };
    }
    let replay: Vec<Publication> = page
        .pubs
        .into_iter()
        .filter(|p| p.offset.is_some_and(|o| o > since.offset && o <= page.top))
        .collect();
    let mut expected = since.offset + 1;
    let contiguous = replay.iter().all(|p| {
        let ok = p.offset == Some(expected);
        expected += 1;
        ok
    });
    let complete = contiguous && expected == page.top + 1;
    Resume {
        recovered: Some(complete),
        replay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Payload;

    fn page(epoch: &str, top: u64, offsets: &[u64]) -> HistoryPage {
        HistoryPage {
            epoch: epoch.into(),
            top,
            pubs: offsets
                .iter()
                .map(|o| {
                    let mut p = Publication::new("c", "e", Payload::null());
                    p.offset = Some(*o);
                    p
                })
                .collect(),
        }
    }

    fn since(offset: u64, epoch: &str) -> Since {
        Since {
            offset,
            epoch: epoch.into(),
        }
    }

    fn offsets(r: &Resume) -> Vec<u64> {
        r.replay.iter().map(|p| p.offset.unwrap_or(0)).collect()
    }

    #[test]
    fn full_partial_and_lost() {
        let r = assess(Some(&since(2, "e")), page("e", 5, &[3, 4, 5]));
        assert_eq!((r.recovered, offsets(&r)), (Some(true), vec![3, 4, 5]));
        // Nothing missed.
        let r = assess(Some(&since(5, "e")), page("e", 5, &[]));
        assert_eq!((r.recovered, offsets(&r)), (Some(true), vec![]));
        // Trimmed: offset 3 fell out of retention.
        let r = assess(Some(&since(2, "e")), page("e", 5, &[4, 5]));
        assert_eq!((r.recovered, offsets(&r)), (Some(false), vec![4, 5]));
        // Replay limit reached before the top.
        let r = assess(Some(&since(2, "e")), page("e", 9, &[3, 4]));
        assert_eq!(r.recovered, Some(false));
        // Epoch changed (stream lost or reset): old offsets mean nothing.
        let r = assess(Some(&since(2, "old")), page("new", 5, &[1, 2, 3]));
        assert_eq!((r.recovered, offsets(&r)), (Some(false), vec![]));
        // A client ahead of the server.
        let r = assess(Some(&since(9, "e")), page("e", 5, &[]));
        assert_eq!(r.recovered, Some(false));
        // Resumed from "no history yet": everything from offset 1 is replayed.
        let r = assess(Some(&since(0, "")), page("e", 2, &[1, 2]));
        assert_eq!((r.recovered, offsets(&r)), (Some(true), vec![1, 2]));
        let r = assess(Some(&since(0, "")), page("e", 3, &[2, 3]));
        assert_eq!(r.recovered, Some(false));
        // No resume asked.
        let r = assess(None, page("e", 5, &[5]));
        assert_eq!((r.recovered, offsets(&r)), (None, vec![]));
    }
}
