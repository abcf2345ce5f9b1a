//! Field-by-field checks over a decoded JSON object that collect every violation instead of stopping
//! at the first, which serde's derive cannot do.
//!
//! Paths are built lazily ([`FieldPath`] is `Copy` and only formatted when a rule fails), so checking a
//! valid order allocates nothing per field. This module knows JSON types and paths, not order rules.

use std::fmt;

use crate::document::{Json, Object};

use crate::records::{Reason, Rule};

/// A JSON path into the checked object, e.g. `orderId`, `items[2].quantity`, `contact.email`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldPath {
    Root(&'static str),
    Element {
        array: &'static str,
        index: usize,
        field: Option<&'static str>,
    },
    Member {
        object: &'static str,
        field: &'static str,
    },
}

impl FieldPath {
    /// The path of member `field` of this path's element (only meaningful for elements).
    pub(crate) fn element_field(array: &'static str, index: usize, field: &'static str) -> Self {
        Self::Element {
            array,
            index,
            field: Some(field),
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root(field) => f.write_str(field),
            Self::Element {
                array,
                index,
                field: None,
            } => write!(f, "{array}[{index}]"),
            Self::Element {
                array,
                index,
                field: Some(field),
            } => write!(f, "{array}[{index}].{field}"),
            Self::Member { object, field } => write!(f, "{object}.{field}"),
        }
    }
}

/// A member of an object, with JSON `null` treated as absent (shops often send `"discountMinor": null`).
pub(crate) fn member<'v, 'a>(object: &'v Object<'a>, name: &str) -> Option<&'v Json<'a>> {
    object.get(name).filter(|value| !value.is_null())
}

/// Collects [`Reason`]s; every typed accessor reports its own failure and returns `None`.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    reasons: Vec<Reason>,
}

impl Checks {
    pub(crate) fn fail(&mut self, path: FieldPath, rule: Rule, message: impl Into<String>) {
        self.reasons.push(Reason {
            field: path.to_string(),
            rule,
            message: message.into(),
        });
    }

    /// Records `rule` as violated unless `ok`; returns `ok` so it chains in `Option::filter`.
    pub(crate) fn ensure(
        &mut self,
        ok: bool,
        path: FieldPath,
        rule: Rule,
        message: &'static str,
    ) -> bool {
        if !ok {
            self.fail(path, rule, message);
        }
        ok
    }

    /// The value of a required field; reports [`Rule::Required`] when it is absent.
    pub(crate) fn required<'v, 'a>(
        &mut self,
        value: Option<&'v Json<'a>>,
        path: FieldPath,
    ) -> Option<&'v Json<'a>> {
        if value.is_none() {
            self.fail(path, Rule::Required, "is required");
        }
        value
    }

    pub(crate) fn string<'v>(&mut self, value: &'v Json<'_>, path: FieldPath) -> Option<&'v str> {
        let text = value.as_str();
        if text.is_none() {
            self.fail(path, Rule::WrongType, "must be a string");
        }
        text
    }

    /// An integer that fits `i64`; decimals are refused because money is integer minor units.
    pub(crate) fn integer(&mut self, value: &Json<'_>, path: FieldPath) -> Option<i64> {
        match value {
            Json::Number(number) if number.is_i64() => number.as_i64(),
            Json::Number(number) if number.is_u64() => {
                self.fail(path, Rule::IntegerRange, "must fit a signed 64-bit integer");
                None
            }
            _ => {
                self.fail(
                    path,
                    Rule::WrongType,
                    "must be an integer (minor units, no decimals)",
                );
                None
            }
        }
    }

    pub(crate) fn array<'v, 'a>(
        &mut self,
        value: &'v Json<'a>,
        path: FieldPath,
    ) -> Option<&'v [Json<'a>]> {
        let elements = value.as_array();
        if elements.is_none() {
            self.fail(path, Rule::WrongType, "must be an array");
        }
        elements
    }

    pub(crate) fn object<'v, 'a>(
        &mut self,
        value: &'v Json<'a>,
        path: FieldPath,
    ) -> Option<&'v Object<'a>> {
        let object = value.as_object();
        if object.is_none() {
            self.fail(path, Rule::WrongType, "must be an object");
        }
        object
    }

    /// `Ok(value)` when no rule failed, otherwise every reason collected.
    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, Vec<Reason>> {
        match value {
            Some(value) if self.reasons.is_empty() => Ok(value),
            _ => Err(self.reasons),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_as_json_paths() {
        assert_eq!(FieldPath::Root("orderId").to_string(), "orderId");
        assert_eq!(
            FieldPath::element_field("items", 2, "quantity").to_string(),
            "items[2].quantity"
        );
        let element = FieldPath::Element {
            array: "items",
            index: 0,
            field: None,
        };
        assert_eq!(element.to_string(), "items[0]");
        let member = FieldPath::Member {
            object: "contact",
            field: "email",
        };
        assert_eq!(member.to_string(), "contact.email");
    }

    #[test]
    fn finish_fails_without_reasons_when_no_value_was_built() {
        // A caller bug (no value, no reason) must still not produce a "valid" result.
        assert_eq!(Checks::default().finish::<()>(None), Err(Vec::new()));
    }
}
