//! Conditional publishes and history reads against a real gateway (single node,
//! in-memory broker), with JSON and MessagePack clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use client::{Appended, Client, Encoding, Error, ErrorCode, Event, Since};
use serde_json::json;
use support::*;

fn at(offset: u64, epoch: &str) -> Since {
    Since {
        offset,
        epoch: epoch.into(),
    }
}

#[tokio::test]
async fn publish_if_appends_at_the_expected_position_or_conflicts() {
    let gw = gateway().args(&["--history", "doc:* 100 1h"]).start().await;
    for enc in [Encoding::Json, Encoding::MsgPack] {
        let doc = format!("doc:{}", enc.name());
        let tok = token("alice", &["doc:*", "room:*"], &["doc:*", "room:*"], 600);
        let (client, mut events) = Client::builder(gw.ws_url())
            .token(tok)
            .encoding(enc)
            .build()
            .unwrap();
        connected(&mut events).await;
        let sub = client.subscribe(doc.as_str()).await.unwrap();
        assert_eq!((sub.epoch.as_deref(), sub.offset), (Some(""), Some(0)));

        // The first publication of a history that has not started: offset 0, any epoch.
        let a = client
            .publish_if(doc.as_str(), "op", &json!({"n": 1}), at(0, ""))
            .await
            .unwrap();
        assert_eq!(a.offset, 1);
        assert!(!a.epoch.is_empty());
        let epoch = a.epoch.clone();

        // The same position again: refused, with where the channel is.
        let e = client
            .publish_if(doc.as_str(), "op", &json!({"n": 2}), at(0, ""))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            Error::Conflict {
                offset: 1,
                epoch: epoch.clone()
            }
        );
        // Another epoch at the right offset: refused too.
        let e = client
            .publish_if(doc.as_str(), "op", &json!({"n": 2}), at(1, "other"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Conflict));

        let b: Appended = client
            .publish_if(doc.as_str(), "op", &json!({"n": 2}), at(1, &epoch))
            .await
            .unwrap();
        assert_eq!((b.offset, b.epoch.as_str()), (2, epoch.as_str()));

        // Only the two accepted ones arrive, with their offsets and epoch.
        for n in [1u64, 2] {
            match until(&mut events, "an op", |e| matches!(e, Event::Message { .. })).await {
                Event::Message {
                    channel,
                    payload,
                    offset,
                    epoch: ep,
                    ..
                } => {
                    assert_eq!(channel, doc);
                    assert_eq!(payload.parse::<serde_json::Value>().unwrap()["n"], n);
                    assert_eq!(offset, Some(n));
                    assert_eq!(ep.as_deref(), Some(epoch.as_str()));
                }
                _ => unreachable!(),
            }
        }

        // The last entry; the entries after a position; a position of another epoch.
        let h = client.history(doc.as_str(), Some(1), None).await.unwrap();
        assert_eq!((h.epoch.as_str(), h.offset), (epoch.as_str(), 2));
        let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [2]);
        assert_eq!(h.publications[0].payload, json!({"n": 2}));
        assert_eq!(h.publications[0].event, "op");
        let h = client
            .history(doc.as_str(), Some(100), Some(at(0, &epoch)))
            .await
            .unwrap();
        let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [1, 2]);
        let h = client
            .history(doc.as_str(), None, Some(at(1, "other")))
            .await
            .unwrap();
        assert!(h.publications.is_empty());
        assert_eq!(h.offset, 2);

        // A channel without history refuses both.
        let e = client
            .publish_if("room:1", "op", &json!(1), at(0, ""))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Server { .. }), "{e:?}");
        let e = client.history("room:1", None, None).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadRequest));
        client.close().await;
    }
}
