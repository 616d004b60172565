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
        check_msgpack(raw.get())?;
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

/// JSON text must also be deliverable as MessagePack. serde_json accepts a
/// `RawValue` without converting its scalars, so it lets through numbers that no
/// `f64` holds (`1e400`) and lone UTF-16 surrogates in escapes (`"\ud800"`), which
/// transcoding for MessagePack subscribers then refuses (found by fuzzing:
/// docs/fuzzing.md). One walk that converts every scalar as transcoding would, and
/// keeps nothing, finds both; the depth check before it bounds its recursion.
fn check_msgpack<E: serde::de::Error>(text: &str) -> Result<(), E> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde::de::DeserializeSeed::deserialize(Scalars, &mut de)
        .and_then(|()| de.end())
        .map_err(|e| {
            E::custom(format_args!(
                "payload is not deliverable as MessagePack: {e}"
            ))
        })
}

/// Visits every value of a JSON document through `deserialize_any` (what
/// transcoding does), so strings are unescaped and numbers converted, and
/// discards them.
#[derive(Clone, Copy)]
struct Scalars;

impl<'de> serde::de::DeserializeSeed<'de> for Scalars {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Scalars {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
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
            let raw = Box::<RawValue>::deserialize(deserializer)?;
            check_depth(raw.get())?;
            check_msgpack(raw.get())?;
            raw
        } else {
            let value = serde_json::Value::deserialize(deserializer)?;
            let raw = serde_json::value::to_raw_value(&value).map_err(serde::de::Error::custom)?;
            check_depth(raw.get())?;
            raw
        };
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
    fn payloads_that_messagepack_cannot_carry_are_refused() {
        // Found by fuzzing (docs/fuzzing.md): valid for a RawValue, not transcodable.
        for text in ["1e400", "[-1e400]", r#""\ud800""#, r#"{"\ud979":true}"#] {
            let e = Payload::from_json(text).unwrap_err().to_string();
            assert!(e.contains("not deliverable as MessagePack"), "{text}: {e}");
            let j = format!(r#"{{"p":{text}}}"#);
            #[derive(Deserialize)]
            struct Holder {
                #[allow(dead_code)]
                p: Payload,
            }
            assert!(serde_json::from_str::<Holder>(&j).is_err(), "{j}");
        }
        for text in ["1e308", "18446744073709551616", "-0", r#""\ud83d\ude00""#] {
            let p = Payload::from_json(text).unwrap();
            rmp_serde::to_vec_named(&p).unwrap();
        }
    }

    #[test]
    fn floats_survive_the_json_text_exactly() {
        // Found by fuzzing (docs/fuzzing.md): without serde_json's float_roundtrip
        // these came back one ulp off for MessagePack subscribers.
        for x in [
            9.091453593303956e276_f64,
            -1.3631157189680623e57,
            3.004444444444445e51,
            0.1,
        ] {
            let m = rmp_serde::to_vec(&[x]).unwrap();
            let p: Payload = rmp_serde::from_slice(&m).unwrap();
            let back: Vec<f64> =
                rmp_serde::from_slice(&rmp_serde::to_vec_named(&p).unwrap()).unwrap();
            assert_eq!(back[0].to_bits(), x.to_bits(), "{x:e} became {:e}", back[0]);
        }
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
