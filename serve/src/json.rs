//! JSON request bodies in TensorFlow Serving's row format, `{"instances": [[...], ...]}` (or its
//! columnar spelling `{"inputs": [[...], ...]}`, which for a model of one input is the same
//! list of rows), read straight into one flat `Vec<f32>`: each row's width is checked as it is
//! read, and reading stops at the first row past the limit.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Which key held the rows: the answer uses the matching key (`predictions` or `outputs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `{"instances": ...}`, answered with `{"predictions": ...}`.
    Instances,
    /// `{"inputs": ...}`, answered with `{"outputs": ...}`.
    Inputs,
}

impl Key {
    /// The key of the answer.
    pub fn answer(self) -> &'static str {
        match self {
            Key::Instances => "predictions",
            Key::Inputs => "outputs",
        }
    }
}

/// A parsed request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// The key the rows came under.
    pub key: Key,
    /// Number of rows.
    pub rows: usize,
    /// `rows * width` values, row-major, all finite.
    pub data: Vec<f32>,
}

/// Why a body was refused: the message for the client, and whether it was for too many rows
/// (413) rather than malformed or wrong content (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Too many rows.
    pub too_many_rows: bool,
    /// What is wrong (serde_json's message, with its line and column).
    pub message: String,
}

/// Parse `body` for a model whose rows have `width` values, at most `max_rows` of them.
pub fn parse(body: &[u8], width: usize, max_rows: usize) -> Result<Rows, JsonError> {
    let too_many = Cell::new(false);
    let seed = Body {
        width,
        max_rows,
        too_many: &too_many,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = seed.deserialize(&mut de).and_then(|r| de.end().map(|()| r));
    result.map_err(|e| JsonError {
        too_many_rows: too_many.get(),
        message: e.to_string(),
    })
}

struct Body<'a> {
    width: usize,
    max_rows: usize,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Body<'_> {
    type Value = Rows;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Rows, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Body<'_> {
    type Value = Rows;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"an object {"instances": [[...], ...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Rows, A::Error> {
        let mut found: Option<Rows> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let key = match &*key {
                "instances" => Key::Instances,
                "inputs" => Key::Inputs,
                // "signature_name" and the like: nothing to choose for a one-input model.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if found.is_some() {
                return Err(de::Error::custom(
                    r#"the body has both "instances" and "inputs", or one twice"#,
                ));
            }
            let mut data = Vec::new();
            let rows = map.next_value_seed(RowList {
                width: self.width,
                max_rows: self.max_rows,
                too_many: self.too_many,
                data: &mut data,
            })?;
            found = Some(Rows { key, rows, data });
        }
        found.ok_or_else(|| de::Error::custom(r#"the body has no "instances" (a list of rows)"#))
    }
}

/// The list of rows: appends each to `data`, returns the number of rows.
struct RowList<'a> {
    width: usize,
    max_rows: usize,
    too_many: &'a Cell<bool>,
    data: &'a mut Vec<f32>,
}

impl<'de> DeserializeSeed<'de> for RowList<'_> {
    type Value = usize;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowList<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of rows of {} numbers", self.width)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut rows = 0usize;
        loop {
            if rows == self.max_rows {
                // One more row would be over the limit: stop before reading it.
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    self.too_many.set(true);
                    return Err(de::Error::custom(format!(
                        "more than {} rows, the limit per request",
                        self.max_rows
                    )));
                }
                break;
            }
            let row = Row {
                width: self.width,
                index: rows,
                data: self.data,
            };
            if seq.next_element_seed(row)?.is_none() {
                break;
            }
            rows += 1;
        }
        if rows == 0 {
            return Err(de::Error::custom("no rows: send at least one instance"));
        }
        Ok(rows)
    }
}

/// One row: exactly `width` finite numbers, appended to `data`.
struct Row<'a> {
    width: usize,
    index: usize,
    data: &'a mut Vec<f32>,
}

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "row {} as a list of {} numbers",
            self.index + 1,
            self.width
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0usize;
        while n < self.width {
            let Some(v) = seq.next_element::<f32>()? else {
                return Err(de::Error::custom(format!(
                    "row {} has {n} values, the model takes {} input features",
                    self.index + 1,
                    self.width
                )));
            };
            // JSON has no NaN or infinity; a number past f32's range would become one.
            if !v.is_finite() {
                return Err(de::Error::custom(format!(
                    "row {}, column {}: the value is outside float32's range",
                    self.index + 1,
                    n + 1
                )));
            }
            self.data.push(v);
            n += 1;
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "row {} has more than {} values, the model takes {}",
                self.index + 1,
                self.width,
                self.width
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_flat_and_checked() {
        let r = parse(
            br#"{"signature_name": {"x": [1]}, "instances": [[1, 2.5], [-3e2, 0]]}"#,
            2,
            4,
        )
        .unwrap();
        assert_eq!(r.key, Key::Instances);
        assert_eq!((r.rows, r.data), (2, vec![1.0, 2.5, -300.0, 0.0]));
        assert_eq!(
            parse(br#"{"inputs": [[1]]}"#, 1, 1).unwrap().key,
            Key::Inputs
        );

        let e = |b: &str| parse(b.as_bytes(), 2, 2).unwrap_err();
        assert!(
            e(r#"{"instances": [[1, 2, 3]]}"#)
                .message
                .contains("more than 2 values")
        );
        assert!(
            e(r#"{"instances": [[1]]}"#)
                .message
                .contains("row 1 has 1 values")
        );
        assert!(
            e(r#"{"instances": [[1, "a"]]}"#)
                .message
                .contains("invalid type")
        );
        assert!(
            e(r#"{"instances": [[1, null]]}"#)
                .message
                .contains("invalid type")
        );
        assert!(
            e(r#"{"instances": [[1, 1e39]]}"#)
                .message
                .contains("column 2")
        );
        assert!(
            e(r#"{"instances": [[1, 1e999]]}"#)
                .message
                .contains("out of range")
        );
        assert!(
            e(r#"{"instances": [[1, NaN]]}"#)
                .message
                .contains("expected value")
        );
        assert!(e(r#"{"instances": []}"#).message.contains("no rows"));
        assert!(
            e(r#"{"instances": [1, 2]}"#)
                .message
                .contains("invalid type")
        );
        assert!(
            e(r#"{"rows": [[1, 2]]}"#)
                .message
                .contains("no \"instances\"")
        );
        assert!(
            e(r#"{"instances": [[1, 2]]} x"#)
                .message
                .contains("trailing")
        );
        assert!(
            e(r#"{"instances": [[1, 2]], "inputs": [[1, 2]]}"#)
                .message
                .contains("both")
        );
        let many = e(r#"{"instances": [[1, 2], [1, 2], [1, 2]]}"#);
        assert!(many.too_many_rows && many.message.contains("more than 2 rows"));
        assert!(!e(r#"{"instances": [[1, 2]"#).too_many_rows);
        // Deep nesting, in an ignored field or in the rows, is an error, never a deep recursion.
        let deep = format!(r#"{{"x": {}}}"#, "[".repeat(100_000));
        assert!(e(&deep).message.contains("expected value"));
        let deep = format!(r#"{{"instances": {}}}"#, "[".repeat(100_000));
        assert!(e(&deep).message.contains("invalid type: sequence"));
    }
}
