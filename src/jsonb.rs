//! Reading jsonb in place, from its binary form.
//!
//! Hashing and diffing whole run outputs (tens of MB of jsonb) is dominated by
//! the text round trip (`jsonb_out`, then a JSON parse) if the value is read
//! through pgrx's `JsonB`. Here a jsonb datum is detoasted once and walked with
//! PostgreSQL's own container API (`getKeyJsonValueFromContainer`,
//! `JsonbIteratorNext`): strings are borrowed from the datum, object fields
//! are found by binary search, nothing is copied.
use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::datum::DatumWithOid;
use pgrx::AnyElement;
use std::marker::PhantomData;

/// An array or object inside a detoasted jsonb datum that lives for `'a`.
#[derive(Clone, Copy)]
pub struct Container<'a> {
    ptr: *mut pg_sys::JsonbContainer,
    _datum: PhantomData<&'a ()>,
}

/// One jsonb value, borrowed from its datum.
#[derive(Clone, Copy)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Number(Number<'a>),
    String(&'a str),
    Array(Container<'a>),
    Object(Container<'a>),
}

/// A numeric inside a jsonb datum that lives for `'a`; read it through its methods.
#[derive(Clone, Copy)]
pub struct Number<'a> {
    ptr: pg_sys::Numeric,
    _datum: PhantomData<&'a ()>,
}

/// A jsonb column value taken from a tuple as it is (no conversion), for
/// `PgHeapTuple::get_by_name` and SPI rows; read it with [`JsonbDatum::root`].
/// `'a` is the life of the tuple it came from: the nodes read from it live as long.
#[derive(Clone, Copy)]
pub struct JsonbDatum<'a>(pg_sys::Datum, PhantomData<&'a ()>);

impl<'a> JsonbDatum<'a> {
    /// Wraps a jsonb datum.
    ///
    /// # Safety
    /// `datum` must be a non-NULL jsonb value that outlives `'a`.
    pub unsafe fn new(datum: pg_sys::Datum) -> Self {
        JsonbDatum(datum, PhantomData)
    }

    /// The root value; it borrows the datum for `'a`, the wrapper's own life.
    pub fn root(self) -> Node<'a> {
        // SAFETY: a non-NULL jsonb datum living for 'a (FromDatum is only reached
        // for non-NULL jsonb columns; `new` requires it of its caller)
        unsafe { root_of_datum(self.0) }
    }
}

impl FromDatum for JsonbDatum<'_> {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        (!is_null).then_some(JsonbDatum(datum, PhantomData))
    }
}

impl IntoDatum for JsonbDatum<'_> {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: the datum is passed through unchanged, and the result lives no longer than its source
unsafe impl pgrx::datum::UnboxDatum for JsonbDatum<'_> {
    type As<'src>
        = JsonbDatum<'src>
    where
        Self: 'src;
    unsafe fn unbox<'src>(datum: pgrx::datum::Datum<'src>) -> JsonbDatum<'src>
    where
        Self: 'src,
    {
        JsonbDatum(datum.sans_lifetime(), PhantomData)
    }
}

fn require_jsonb(arg: &AnyElement) {
    if arg.oid() != pg_sys::JSONBOID {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "the argument must be jsonb", None);
    }
}

/// A jsonb argument passed on as an SPI parameter, without converting it; the
/// parameter borrows the argument, so it cannot outlive it.
pub fn spi_arg(arg: &AnyElement) -> DatumWithOid<'_> {
    require_jsonb(arg);
    // SAFETY: the datum is a jsonb value (checked above) that lives as long as
    // the borrowed argument, which bounds the returned lifetime
    unsafe { DatumWithOid::new(*arg, pg_sys::JSONBOID) }
}

/// A jsonb argument detoasted once, in the memory context of the current call:
/// SPI statements that pick elements out of it (`$1 -> i`) then read memory
/// instead of decompressing the whole document for every element. 22023 when
/// the argument is not jsonb.
pub fn detoasted(arg: AnyElement) -> AnyElement {
    require_jsonb(&arg);
    // SAFETY: a non-NULL jsonb datum; pg_detoast_datum returns it as it is when it
    // is not toasted, else a plain copy palloc'd in the current (per-call) memory
    // context, which outlives every use within this call
    unsafe {
        let plain = pg_sys::pg_detoast_datum(arg.datum().cast_mut_ptr());
        AnyElement::from_polymorphic_datum(pg_sys::Datum::from(plain), false, pg_sys::JSONBOID)
            .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "the argument must not be NULL", None))
    }
}

/// The root value of a jsonb argument. 22023 when the argument is not jsonb.
pub fn root<'a>(arg: &'a AnyElement) -> Node<'a> {
    require_jsonb(arg);
    // SAFETY: a jsonb datum; pg_detoast_datum returns it with a 4-byte header
    // (aligned, as the container functions expect), in memory that outlives the call
    unsafe { root_of_datum(arg.datum()) }
}

/// The root value of a (non-NULL) jsonb datum.
///
/// # Safety
/// `datum` must be a jsonb datum that lives for `'a`.
pub unsafe fn root_of_datum<'a>(datum: pg_sys::Datum) -> Node<'a> {
    // SAFETY: the caller guarantees a jsonb datum living for 'a; pg_detoast_datum
    // returns it (or a copy in the current memory context) with a 4-byte header
    let jb = unsafe { pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) } as *mut pg_sys::Jsonb;
    // SAFETY: jb points at a detoasted Jsonb; its root is the top container
    let c = Container { ptr: unsafe { &raw mut (*jb).root }, _datum: PhantomData };
    let header = c.header();
    if header & pg_sys::JB_FSCALAR != 0 {
        c.iter().next().map_or(Node::Null, |(_, v)| v)
    } else if header & pg_sys::JB_FOBJECT != 0 {
        Node::Object(c)
    } else {
        Node::Array(c)
    }
}

/// A jsonb string as `&str`; 22021 unless it is UTF-8.
///
/// # Safety
/// `ptr` must point at `len` bytes that stay valid for `'a` (a jsonb string
/// inside a datum living for `'a`).
unsafe fn utf8<'a>(ptr: *const std::ffi::c_char, len: std::ffi::c_int) -> &'a str {
    // SAFETY: the caller guarantees (ptr, len) is valid for 'a
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len as usize) };
    std::str::from_utf8(bytes).unwrap_or_else(|_| {
        raise(PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, "deal_store needs a UTF8 database", None)
    })
}

/// The node a `JsonbValue` filled by PostgreSQL's container API holds.
///
/// # Safety
/// What `v` points into (strings, numerics, containers) must live for `'a`.
unsafe fn node<'a>(v: &pg_sys::JsonbValue) -> Node<'a> {
    // SAFETY: the union member read is the one `type_` names; the caller
    // guarantees what it points at lives for 'a
    unsafe {
        match v.type_ {
            pg_sys::jbvType::jbvBool => Node::Bool(v.val.boolean),
            pg_sys::jbvType::jbvNumeric => Node::Number(Number { ptr: v.val.numeric, _datum: PhantomData }),
            pg_sys::jbvType::jbvString => Node::String(utf8(v.val.string.val, v.val.string.len)),
            pg_sys::jbvType::jbvBinary => {
                let c = Container { ptr: v.val.binary.data, _datum: PhantomData };
                if c.header() & pg_sys::JB_FOBJECT != 0 { Node::Object(c) } else { Node::Array(c) }
            }
            _ => Node::Null,
        }
    }
}

impl<'a> Container<'a> {
    fn header(&self) -> u32 {
        // SAFETY: ptr points at a container header
        unsafe { (*self.ptr).header }
    }

    /// The number of elements (array) or pairs (object).
    pub fn len(&self) -> usize {
        (self.header() & pg_sys::JB_CMASK) as usize
    }

    /// The value of `key` in an object (binary search), None when absent.
    pub fn get(&self, key: &str) -> Option<Node<'a>> {
        let mut v = std::mem::MaybeUninit::<pg_sys::JsonbValue>::zeroed();
        // SAFETY: ptr is an object container; the result is written into v
        let found = unsafe {
            pg_sys::getKeyJsonValueFromContainer(self.ptr, key.as_ptr().cast(), key.len() as _, v.as_mut_ptr())
        };
        // SAFETY: written when found is not NULL; it points into this container's datum ('a)
        (!found.is_null()).then(|| unsafe { node(v.assume_init_ref()) })
    }

    /// The elements of an array (key None) or the pairs of an object, in storage order.
    pub fn iter(&self) -> Iter<'a> {
        // SAFETY: ptr is a container of a live datum
        Iter { it: unsafe { pg_sys::JsonbIteratorInit(self.ptr) }, _datum: PhantomData }
    }
}

/// Walks one level of a container (nested containers come back as nodes).
pub struct Iter<'a> {
    it: *mut pg_sys::JsonbIterator,
    _datum: PhantomData<&'a ()>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (Option<&'a str>, Node<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut key = None;
        let mut v = std::mem::MaybeUninit::<pg_sys::JsonbValue>::zeroed();
        loop {
            if self.it.is_null() {
                return None;
            }
            // SAFETY: a live iterator; it frees itself (and becomes NULL) at the end
            let token = unsafe { pg_sys::JsonbIteratorNext(&mut self.it, v.as_mut_ptr(), true) };
            // SAFETY: the iterator wrote v for KEY, VALUE and ELEM tokens
            let val = unsafe { v.assume_init_ref() };
            match token {
                pg_sys::JsonbIteratorToken::WJB_KEY => {
                    // SAFETY: a key is a string
                    key = Some(unsafe { utf8(val.val.string.val, val.val.string.len) });
                }
                pg_sys::JsonbIteratorToken::WJB_VALUE | pg_sys::JsonbIteratorToken::WJB_ELEM => {
                    // SAFETY: val points into the iterated container's datum ('a)
                    return Some((key, unsafe { node(val) }));
                }
                pg_sys::JsonbIteratorToken::WJB_DONE => return None,
                _ => {} // begin / end of this container
            }
        }
    }
}

impl Node<'_> {
    /// The JSON type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "boolean",
            Node::Number(_) => "number",
            Node::String(_) => "string",
            Node::Array(_) => "array",
            Node::Object(_) => "object",
        }
    }

}

impl Number<'_> {
    /// The number in PostgreSQL's normalised form: plain decimal, no trailing
    /// fractional zeros (`numeric_normalize`), passed to `f`.
    pub fn with_text<R>(self, f: impl FnOnce(&str) -> R) -> R {
        // SAFETY: ptr points at a numeric inside a datum that outlives self ('a);
        // the text is palloc'd here and freed after f
        unsafe {
            let text = pg_sys::numeric_normalize(self.ptr);
            let r = f(std::ffi::CStr::from_ptr(text).to_str().unwrap_or("0"));
            pg_sys::pfree(text.cast());
            r
        }
    }

    /// The number as PostgreSQL's numeric output writes it (what a text column
    /// stores for it: `5.0` stays `5.0`), to `f`.
    pub fn with_output<R>(self, f: impl FnOnce(&str) -> R) -> R {
        // SAFETY: as in with_text; numeric_out reads the numeric and returns palloc'd text
        unsafe {
            let text = pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_NUMERIC_OUT), pg_sys::Datum::from(self.ptr));
            let r = f(std::ffi::CStr::from_ptr(text).to_str().unwrap_or("0"));
            pg_sys::pfree(text.cast());
            r
        }
    }
}

impl Node<'_> {
    /// A number as f64 (None for other types).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Node::Number(n) => n.with_text(|t| t.parse().ok()),
            _ => None,
        }
    }
}

/// Builds a jsonb object in PostgreSQL's binary form from keys and jsonb
/// values made elsewhere (e.g. by `to_jsonb`), with no text in between.
/// Keys and values are referenced, not copied, until [`ObjectBuilder::finish`].
pub struct ObjectBuilder<'a> {
    state: *mut pg_sys::JsonbParseState,
    last: *mut pg_sys::JsonbValue,
    _keys: PhantomData<&'a str>,
}

impl<'a> ObjectBuilder<'a> {
    /// An empty object, allocated in the current memory context.
    pub fn new() -> Self {
        let mut b = ObjectBuilder { state: std::ptr::null_mut(), last: std::ptr::null_mut(), _keys: PhantomData };
        b.push(pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT, std::ptr::null_mut());
        b
    }

    fn push(&mut self, token: pg_sys::JsonbIteratorToken::Type, value: *mut pg_sys::JsonbValue) {
        // SAFETY: the parse state is ours; tokens come in a valid order (the methods below)
        self.last = unsafe { pg_sys::pushJsonbValue(&mut self.state, token, value) };
    }

    /// The next key; a value or a nested object must follow.
    pub fn key(&mut self, key: &'a str) {
        let mut v = pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvString,
            val: pg_sys::JsonbValue__bindgen_ty_1 {
                string: pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 { len: key.len() as _, val: key.as_ptr().cast_mut().cast() },
            },
        };
        self.push(pg_sys::JsonbIteratorToken::WJB_KEY, &mut v);
    }

    /// A nested object as the value of the last key, up to [`ObjectBuilder::end_object`].
    pub fn begin_object(&mut self) {
        self.push(pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT, std::ptr::null_mut());
    }

    pub fn end_object(&mut self) {
        self.push(pg_sys::JsonbIteratorToken::WJB_END_OBJECT, std::ptr::null_mut());
    }

    /// A jsonb datum (None: JSON null) as the value of the last key.
    ///
    /// # Safety
    /// `value` must be a jsonb datum that lives until `finish`.
    pub unsafe fn value(&mut self, value: Option<pg_sys::Datum>) {
        // SAFETY: a zeroed JsonbValue is jbvNull
        let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
        if let Some(datum) = value {
            // SAFETY: a jsonb datum (caller); scalars are read out of their pseudo-array,
            // containers are passed as binary and unpacked by pushJsonbValue
            unsafe {
                let jb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::Jsonb;
                let root = &raw mut (*jb).root;
                if (*root).header & pg_sys::JB_FSCALAR != 0 {
                    pg_sys::JsonbExtractScalar(root, &mut v);
                } else {
                    v.type_ = pg_sys::jbvType::jbvBinary;
                    v.val.binary = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_4 {
                        len: pgrx::varlena::varsize_any_exhdr(jb.cast()) as _,
                        data: root,
                    };
                }
            }
        }
        self.push(pg_sys::JsonbIteratorToken::WJB_VALUE, &mut v);
    }

    /// The finished object as a jsonb datum.
    pub fn finish(mut self) -> pg_sys::Datum {
        self.push(pg_sys::JsonbIteratorToken::WJB_END_OBJECT, std::ptr::null_mut());
        // SAFETY: last is the complete top-level object
        pg_sys::Datum::from(unsafe { pg_sys::JsonbValueToJsonb(self.last) })
    }
}
