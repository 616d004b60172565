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
    /// Parses and validates JSON text.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let raw: Box<RawValue> = serde_json::from_str(text)?;
        Ok(Self(Arc::from(raw)))
    }

    /// Serializes any value into a payload.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self(Arc::from(serde_json::value::to_raw_value(value)?)))
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
        if deserializer.is_human_readable() {
            let raw = Box::<RawValue>::deserialize(deserializer)?;
            Ok(Self(Arc::from(raw)))
        } else {
            let value = serde_json::Value::deserialize(deserializer)?;
            let raw = serde_json::value::to_raw_value(&value).map_err(serde::de::Error::custom)?;
            Ok(Self(Arc::from(raw)))
        }
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
}
