use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::sync::Arc;

/// A notification payload: any JSON value, kept as validated JSON text.
///
/// JSON text is the canonical form because most clients speak JSON: a JSON frame
/// embeds it verbatim, a MessagePack frame transcodes it once per message (not once
/// per recipient). Cloning shares the text.
#[derive(Clone)]
pub struct Payload(Arc<RawValue>);

impl Payload {
    /// Parses and validates JSON text (nesting at most
    /// [`MAX_PAYLOAD_DEPTH`](crate::depth::MAX_PAYLOAD_DEPTH) levels).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        check_depth(text)?;
        let raw: Box<RawValue> = serde_json::from_str(text)?;
        Ok(Self(Arc::from(raw)))
    }

    /// Serializes any value into a payload (nesting at most
    /// [`MAX_PAYLOAD_DEPTH`](crate::depth::MAX_PAYLOAD_DEPTH) levels).
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        let raw = serde_json::value::to_raw_value(value)?;
        check_depth(raw.get())?;
        Ok(Self(Arc::from(raw)))
    }

    pub fn null() -> Self {
        Self::from_json("null").unwrap_or_else(|_| unreachable!("null is valid JSON"))
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Size of the JSON text in bytes (what payload limits are measured on).
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses the payload into a typed value.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

/// A payload must be deliverable in both encodings: no deeper than
/// [`MAX_PAYLOAD_DEPTH`](crate::depth::MAX_PAYLOAD_DEPTH).
fn check_depth<E: serde::de::Error>(text: &str) -> Result<(), E> {
    if crate::depth::json_within(text.as_bytes(), crate::depth::MAX_PAYLOAD_DEPTH) {
        Ok(())
    } else {
        Err(E::custom(format_args!(
            "payload nests deeper than {} levels",
            crate::depth::MAX_PAYLOAD_DEPTH
        )))
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.0.serialize(serializer)
        } else {
            // Binary formats get the value itself, not a string of JSON.
            let mut de = serde_json::Deserializer::from_str(self.0.get());
            serde_transcode::transcode(&mut de, serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = if deserializer.is_human_readable() {
            Box::<RawValue>::deserialize(deserializer)?
        } else {
            let value = serde_json::Value::deserialize(deserializer)?;
            serde_json::value::to_raw_value(&value).map_err(serde::de::Error::custom)?
        };
        check_depth(raw.get())?;
        Ok(Self(Arc::from(raw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_msgpack_round_trip() {
        let p = Payload::from_json(r#"{"a":[1,-2,3.5,"x",null,true]}"#).unwrap();
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, r#"{"a":[1,-2,3.5,"x",null,true]}"#);
        let m = rmp_serde::to_vec_named(&p).unwrap();
        let back: Payload = rmp_serde::from_slice(&m).unwrap();
        assert_eq!(back.json(), r#"{"a":[1,-2,3.5,"x",null,true]}"#);
        assert!(Payload::from_json("{").is_err());
    }

    #[test]
    fn payloads_nest_at_most_64_levels_in_every_form() {
        let deep = |n: usize| format!("{}0{}", "[".repeat(n), "]".repeat(n));
        let ok = Payload::from_json(&deep(64)).unwrap();
        // Deliverable in both encodings.
        let m = rmp_serde::to_vec_named(&ok).unwrap();
        let back: Payload = rmp_serde::from_slice(&m).unwrap();
        assert_eq!(back, ok);
        let e = Payload::from_json(&deep(65)).unwrap_err().to_string();
        assert!(e.contains("deeper than 64"), "{e}");
        let v: serde_json::Value = serde_json::from_str(&deep(65)).unwrap();
        assert!(Payload::from_value(&v).is_err());
        let j = format!(r#"{{"p":{}}}"#, deep(65));
        #[derive(Deserialize)]
        struct Holder {
            #[allow(dead_code)]
            p: Payload,
        }
        assert!(serde_json::from_str::<Holder>(&j).is_err());
    }
}
