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
    Number(pg_sys::Numeric),
    String(&'a str),
    Array(Container<'a>),
    Object(Container<'a>),
}

/// A jsonb column value taken from a tuple as it is (no conversion), for
/// `PgHeapTuple::get_by_name` and SPI rows; read it with [`JsonbDatum::root`].
#[derive(Clone, Copy)]
pub struct JsonbDatum(pg_sys::Datum);

impl JsonbDatum {
    /// Wraps a jsonb datum.
    ///
    /// # Safety
    /// `datum` must be a jsonb value that outlives every use of the wrapper.
    pub unsafe fn new(datum: pg_sys::Datum) -> Self {
        JsonbDatum(datum)
    }

    /// The root value. The datum must outlive `'a` (a tuple of the current call).
    pub fn root<'a>(self) -> Node<'a> {
        // SAFETY: a non-NULL jsonb datum (FromDatum is only reached for jsonb columns)
        unsafe { root_of_datum(self.0) }
    }
}

impl FromDatum for JsonbDatum {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        (!is_null).then_some(JsonbDatum(datum))
    }
}

impl IntoDatum for JsonbDatum {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: the datum is passed through unchanged
unsafe impl pgrx::datum::UnboxDatum for JsonbDatum {
    type As<'src> = JsonbDatum;
    unsafe fn unbox<'src>(datum: pgrx::datum::Datum<'src>) -> JsonbDatum
    where
        Self: 'src,
    {
        JsonbDatum(datum.sans_lifetime())
    }
}

/// Raises 22023 unless a polymorphic argument is jsonb.
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
    unsafe { DatumWithOid::new(arg.clone(), pg_sys::JSONBOID) }
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
    let jb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::Jsonb;
    let c = Container { ptr: &raw mut (*jb).root, _datum: PhantomData };
    let header = c.header();
    if header & pg_sys::JB_FSCALAR != 0 {
        c.iter().next().map_or(Node::Null, |(_, v)| v)
    } else if header & pg_sys::JB_FOBJECT != 0 {
        Node::Object(c)
    } else {
        Node::Array(c)
    }
}

fn utf8<'a>(ptr: *const std::ffi::c_char, len: std::ffi::c_int) -> &'a str {
    // SAFETY: jsonb strings are (ptr, len) slices inside the datum
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len as usize) };
    std::str::from_utf8(bytes).unwrap_or_else(|_| {
        raise(PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, "deal_store needs a UTF8 database", None)
    })
}

fn node<'a>(v: &pg_sys::JsonbValue) -> Node<'a> {
    // SAFETY: the union member read is the one `type_` names
    unsafe {
        match v.type_ {
            pg_sys::jbvType::jbvBool => Node::Bool(v.val.boolean),
            pg_sys::jbvType::jbvNumeric => Node::Number(v.val.numeric),
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
        // SAFETY: written when found is not NULL
        (!found.is_null()).then(|| node(unsafe { v.assume_init_ref() }))
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
                    return Some((key, node(val)));
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

    /// A number in PostgreSQL's normalised form: plain decimal, no trailing
    /// fractional zeros (`numeric_normalize`), passed to `f`.
    pub fn with_number_text<R>(n: pg_sys::Numeric, f: impl FnOnce(&str) -> R) -> R {
        // SAFETY: n points at a numeric inside the datum; the text is palloc'd and freed here
        unsafe {
            let text = pg_sys::numeric_normalize(n);
            let r = f(std::ffi::CStr::from_ptr(text).to_str().unwrap_or("0"));
            pg_sys::pfree(text.cast());
            r
        }
    }

    /// The number as PostgreSQL's numeric output writes it (what a text column
    /// stores for it: `5.0` stays `5.0`), to `f`.
    pub fn with_number_output<R>(n: pg_sys::Numeric, f: impl FnOnce(&str) -> R) -> R {
        // SAFETY: n points at a numeric inside the datum; the text is palloc'd and freed here
        unsafe {
            let text = pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_NUMERIC_OUT), pg_sys::Datum::from(n));
            let r = f(std::ffi::CStr::from_ptr(text).to_str().unwrap_or("0"));
            pg_sys::pfree(text.cast());
            r
        }
    }

    /// A number as f64 (None for other types).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Node::Number(n) => Self::with_number_text(*n, |t| t.parse().ok()),
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
