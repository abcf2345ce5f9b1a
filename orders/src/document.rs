//! A JSON document borrowed from the input bytes, for judging input field by field.
//!
//! `serde_json::Value` allocates every string and a B-tree node per object; on the validate
//! stage's hot path that tree (building and dropping it) was 40 % of the stage's instructions.
//! [`Json`] borrows strings without escapes from the input and keeps an object's members in a
//! `Vec`, looked up from the end so a duplicate member means what it means to `Value`: the last one
//! wins. Any text `Value` accepts, [`Json`] accepts, with the same content (see the tests).
//! This module knows JSON, not orders; it must not be used for our own records (`crate::json`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// One JSON value of a document that borrows from the text it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// A JSON object's members in document order, duplicates included.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Object<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

impl<'a> Object<'a> {
    /// The member `name`; of duplicate members, the last (as `serde_json::Map` keeps it).
    pub(crate) fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

impl<'a> Json<'a> {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(text) => Some(text),
            _ => None,
        }
    }

    pub(crate) fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Self::Array(elements) => Some(elements),
            _ => None,
        }
    }

    pub(crate) fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Self::Object(object) => Some(object),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(value.into()))
    }

    /// Like `Value`: a float JSON cannot hold (never produced by the parser) becomes null.
    fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Number::from_f64(value).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(value)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(element) = seq.next_element()? {
            elements.push(element);
        }
        Ok(Json::Array(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            members.push((key, map.next_value()?));
        }
        Ok(Json::Object(Object(members)))
    }
}

/// An object member's name, borrowed when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;

    /// What `Value` makes of the same text, for comparing the two parses.
    fn to_value(json: &Json<'_>) -> Value {
        match json {
            Json::Null => Value::Null,
            Json::Bool(value) => Value::Bool(*value),
            Json::Number(number) => Value::Number(number.clone()),
            Json::String(text) => Value::String(text.to_string()),
            Json::Array(elements) => Value::Array(elements.iter().map(to_value).collect()),
            Json::Object(Object(members)) => {
                let mut map = Map::new();
                for (key, value) in members {
                    map.insert(key.to_string(), to_value(value));
                }
                Value::Object(map)
            }
        }
    }

    fn same_as_value(text: &str) {
        let ours = serde_json::from_str::<Json<'_>>(text);
        let theirs = serde_json::from_str::<Value>(text);
        match (ours, theirs) {
            (Ok(ours), Ok(theirs)) => assert_eq!(to_value(&ours), theirs, "{text}"),
            (Err(ours), Err(theirs)) => {
                assert_eq!(ours.classify(), theirs.classify(), "{text}");
                assert_eq!(ours.to_string(), theirs.to_string(), "{text}");
            }
            (ours, theirs) => panic!("{text}: {ours:?} vs {theirs:?}"),
        }
    }

    #[test]
    fn documents_mean_what_value_makes_of_them() {
        for text in [
            r#"{"a":1,"a":"last","b":[1,-2,3.5,1e400,-0,18446744073709551616],"c":null}"#,
            r#"{"esc\"aped":"x\u00e9\ud83d\ude00","nested":{"deep":[{"x":[]}]}}"#,
            r#"[true,false,null,"",{}]"#,
            r#""\ud800""#,
            "1E+400",
            "0.1e-300",
            "{",
            "[1,]",
            "\u{feff}{}",
            &format!("{}{}", "[".repeat(200), "]".repeat(200)),
        ] {
            same_as_value(text);
        }
    }

    #[test]
    fn duplicate_members_resolve_to_the_last_like_value() {
        let json: Json<'_> = serde_json::from_str(r#"{"k":1,"k":null}"#).expect("valid");
        let object = json.as_object().expect("object");
        assert!(object.get("k").is_some_and(Json::is_null));
        assert_eq!(object.get("missing"), None);
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let json: Json<'_> = serde_json::from_str(r#"{"id":"o-1","e":"a\nb"}"#).expect("valid");
        let object = json.as_object().expect("object");
        assert!(matches!(
            object.get("id"),
            Some(Json::String(Cow::Borrowed("o-1")))
        ));
        assert!(matches!(object.get("e"), Some(Json::String(Cow::Owned(_)))));
    }

    proptest! {
        #[test]
        fn any_text_parses_like_value(text in "[\\[\\]{}\",:0-9a-e.+\\-\\\\ntrufals ]{0,40}") {
            same_as_value(&text);
        }
    }
}
