//! A JSON writer for output lines that produces exactly the bytes
//! `serde_json::to_writer` produces, faster on what output lines hold.
//!
//! Replay writes hundreds of megabytes of JSON: every intent repeats its
//! image reference twice, and `serde_json` looks at each byte of a string
//! for characters to escape and hands each piece of a line to the writer
//! separately. Here a string that needs no escaping (all of them, in
//! practice) is checked eight bytes at a time and copied whole, numbers are
//! formatted on the stack, and everything goes into one `Vec`.
//!
//! It covers what output lines are made of: structs, strings, integers,
//! booleans, options, unit variants, sequences, maps with string keys and
//! `serde_json`'s `RawValue`. Anything else (a float, say) is
//! [`Unsupported`], and the caller writes that line with `serde_json`
//! instead, so the output never depends on which writer wrote it. A string
//! that does need escaping is escaped by `serde_json` itself.

use std::fmt::Display;

use crate::record::flat::first_special;
use serde::ser::{self, Serialize};

/// The name under which `serde_json` serializes a `RawValue`: a struct of
/// that name with one field holding the JSON text, written as it is.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// A value this writer does not write; the line goes through `serde_json`.
#[derive(Debug)]
pub struct Unsupported;

impl Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not written by the fast JSON writer")
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: Display>(_msg: T) -> Self {
        Unsupported
    }
}

/// Appends `value` as compact JSON to `out`. On an error `out` may hold a
/// partial value: the caller truncates it.
pub fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Unsupported> {
    value.serialize(Writer { out })
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    if first_special(s.as_bytes()).is_some() {
        // Writing into a Vec cannot fail, and serde_json escapes exactly as it always has.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

/// A struct, map or sequence being written: whether a separator comes
/// before the next element, and what closes it.
pub struct Compound<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// Closing bytes: `}`, `]`, or `]}` / `}}` for a variant's contents.
    close: &'static [u8],
    raw: bool,
}

impl<'a> Compound<'a> {
    fn open(out: &'a mut Vec<u8>, open: &[u8], close: &'static [u8]) -> Self {
        out.extend_from_slice(open);
        Compound {
            out,
            first: true,
            close,
            raw: false,
        }
    }

    fn separate(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.separate();
        value.serialize(Writer { out: self.out })
    }

    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        if self.raw {
            return if key == RAW_VALUE_TOKEN {
                value.serialize(RawText { out: self.out })
            } else {
                Err(Unsupported)
            };
        }
        self.separate();
        write_str(self.out, key);
        self.out.push(b':');
        value.serialize(Writer { out: self.out })
    }

    fn close(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(self.close);
        Ok(())
    }
}

/// Opens `{"variant":`; the caller writes the contents and closes them.
fn open_variant(out: &mut Vec<u8>, variant: &str) {
    out.push(b'{');
    write_str(out, variant);
    out.push(b':');
}

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        write_i64(self.out, v);
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        write_u64(self.out, v);
        Ok(())
    }

    fn serialize_f32(self, _v: f32) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_f64(self, _v: f64) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        write_str(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        write_str(self.out, v);
        Ok(())
    }

    fn serialize_bytes(self, _v: &[u8]) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_none(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Unsupported> {
        self.serialize_none()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        write_str(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        open_variant(self.out, variant);
        value.serialize(Writer {
            out: &mut *self.out,
        })?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, Unsupported> {
        Ok(Compound::open(self.out, b"[", b"]"))
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Unsupported> {
        open_variant(self.out, variant);
        Ok(Compound::open(self.out, b"[", b"]}"))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, Unsupported> {
        Ok(Compound::open(self.out, b"{", b"}"))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Unsupported> {
        if name == RAW_VALUE_TOKEN {
            return Ok(Compound {
                out: self.out,
                first: true,
                close: b"",
                raw: true,
            });
        }
        Ok(Compound::open(self.out, b"{", b"}"))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Unsupported> {
        open_variant(self.out, variant);
        Ok(Compound::open(self.out, b"{", b"}}"))
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.separate();
        key.serialize(MapKey { out: self.out })?;
        self.out.push(b':');
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        value.serialize(Writer { out: self.out })
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

/// Writes a map key: strings only (`serde_json` quotes numbers and other
/// keys in ways not worth repeating here).
struct MapKey<'a> {
    out: &'a mut Vec<u8>,
}

/// Writes the text of a `RawValue` as it is.
struct RawText<'a> {
    out: &'a mut Vec<u8>,
}

/// The parts of a serializer that write nothing this writer handles:
/// everything but strings is [`Unsupported`].
macro_rules! only_strings {
    ($t:ident, $write:expr) => {
        impl ser::Serializer for $t<'_> {
            type Ok = ();
            type Error = Unsupported;
            type SerializeSeq = ser::Impossible<(), Unsupported>;
            type SerializeTuple = ser::Impossible<(), Unsupported>;
            type SerializeTupleStruct = ser::Impossible<(), Unsupported>;
            type SerializeTupleVariant = ser::Impossible<(), Unsupported>;
            type SerializeMap = ser::Impossible<(), Unsupported>;
            type SerializeStruct = ser::Impossible<(), Unsupported>;
            type SerializeStructVariant = ser::Impossible<(), Unsupported>;

            fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
                let write: fn(&mut Vec<u8>, &str) = $write;
                write(self.out, v);
                Ok(())
            }

            fn serialize_bool(self, _v: bool) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_i8(self, _v: i8) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_i16(self, _v: i16) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_i32(self, _v: i32) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_i64(self, _v: i64) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_u8(self, _v: u8) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_u16(self, _v: u16) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_u32(self, _v: u32) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_u64(self, _v: u64) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_f32(self, _v: f32) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_f64(self, _v: f64) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_char(self, _v: char) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_bytes(self, _v: &[u8]) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_none(self) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_some<T: Serialize + ?Sized>(self, _v: &T) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_unit(self) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_unit_variant(
                self,
                _name: &'static str,
                _index: u32,
                _variant: &'static str,
            ) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_newtype_struct<T: Serialize + ?Sized>(
                self,
                _name: &'static str,
                _v: &T,
            ) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_newtype_variant<T: Serialize + ?Sized>(
                self,
                _name: &'static str,
                _index: u32,
                _variant: &'static str,
                _v: &T,
            ) -> Result<(), Unsupported> {
                Err(Unsupported)
            }
            fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
                Err(Unsupported)
            }
            fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Unsupported> {
                Err(Unsupported)
            }
            fn serialize_tuple_struct(
                self,
                _name: &'static str,
                _len: usize,
            ) -> Result<Self::SerializeTupleStruct, Unsupported> {
                Err(Unsupported)
            }
            fn serialize_tuple_variant(
                self,
                _name: &'static str,
                _index: u32,
                _variant: &'static str,
                _len: usize,
            ) -> Result<Self::SerializeTupleVariant, Unsupported> {
                Err(Unsupported)
            }
            fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
                Err(Unsupported)
            }
            fn serialize_struct(
                self,
                _name: &'static str,
                _len: usize,
            ) -> Result<Self::SerializeStruct, Unsupported> {
                Err(Unsupported)
            }
            fn serialize_struct_variant(
                self,
                _name: &'static str,
                _index: u32,
                _variant: &'static str,
                _len: usize,
            ) -> Result<Self::SerializeStructVariant, Unsupported> {
                Err(Unsupported)
            }
        }
    };
}

only_strings!(MapKey, write_str);
only_strings!(RawText, |out, text| out.extend_from_slice(text.as_bytes()));

#[cfg(test)]
mod tests;
