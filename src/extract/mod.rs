//! Extract: one audit-log line in, one output event out (DESIGN.md §4, §5).
//!
//! A line is parsed **in place** by simd-json into a tape that the [`Extractor`] keeps and
//! reuses, together with simd-json's scratch [`Buffers`]; the fields are located by tape
//! index ([`Fields`]) and the output is written into a caller-owned buffer. Once the buffers
//! have grown to the largest event seen, extracting an event allocates nothing
//! (`tests/no_alloc.rs` holds this to zero).
//!
//! Size invariant: no `audit` or `ecs` output is larger than [`Extractor::max_event_bytes`]
//! ([`MAX_EVENT_BYTES`] by default, the intake's per-event limit). An event that would be is
//! trimmed — first the pod-spec arrays, then long strings — and marked with
//! `"kube_audit_shipper":{"truncated":true,"original_bytes":N}`; it is never dropped.

mod audit;
mod ecs;
mod fields;
mod json;

pub use fields::Fields;
/// Appends a string as JSON, cut to a byte cap (for records this crate writes itself).
pub use json::string as json_string;
/// Appends a finished document as one JSON string (the `json` member of an `/array` entry).
pub use json::string_of_bytes as json_string_of_bytes;

use json::Limits;
use simd_json::{Buffers, ErrorType, INPUT_PADDING, Node, Tape};
use std::fmt;
use std::io::Write;

/// The largest event sent: 250,000 bytes, the limit of Sekoia's own senders
/// (`sekoia-automation-sdk` drops larger events before sending). The intake documents "250
/// KiB" and drops a larger event (DESIGN.md §5); the SDK's reading is the stricter one. Used
/// for the `audit`/`ecs` forms, the `raw` form and the records this crate writes.
pub const MAX_EVENT_BYTES: usize = 250_000;

/// Deepest nesting accepted. Kubernetes objects stay far below it; it bounds the recursion
/// of the output writer.
pub const MAX_DEPTH: usize = 512;

/// Room kept free when trimming: the truncation marker (under 80 bytes) and the keys that
/// surround the pod-spec arrays in the `ecs` form.
const TRIM_RESERVE: usize = 256;

/// Strings are cut to this many bytes at the second trimming level.
const TRIM_STRING_CAP: usize = 4096;

/// Which output an event is turned into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The event pruned to what the Sekoia parser reads (the default for Sekoia).
    Audit,
    /// The ECS document the intake would produce.
    Ecs,
    /// The line as read.
    Raw,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "audit" => Ok(Format::Audit),
            "ecs" => Ok(Format::Ecs),
            "raw" => Ok(Format::Raw),
            _ => Err(format!("unknown format {s:?} (expected audit, ecs or raw)")),
        }
    }
}

/// Why a line is not an audit event.
#[derive(Debug)]
pub enum ExtractError {
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Valid JSON, but not an object.
    NotAnObject(&'static str),
    /// The line ends before its JSON value does: most likely it was cut.
    Truncated(Cut),
    /// A string is not closed, or holds an unescaped control character: simd-json's first
    /// stage reports both alike and without a position. [`ExtractError::pinpoint`] tells
    /// them apart from the line.
    OpenStringOrControl,
    /// Not valid JSON: what is wrong and the byte offset in the line where it was found.
    Invalid { reason: &'static str, at: usize },
}

/// Where a [truncated](ExtractError::Truncated) line was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Inside a string (a key or a value).
    InString,
    /// Between the members of the top-level object (or inside a nested value that is not a
    /// string).
    InObject,
    /// As [`Cut::InObject`], for a top-level array.
    InArray,
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtractError::InvalidUtf8 => f.write_str("not valid UTF-8"),
            ExtractError::TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
            ExtractError::NotAnObject(kind) => {
                write!(f, "a JSON {kind}, not an object")
            }
            ExtractError::Truncated(Cut::InString) => {
                f.write_str("ends inside a string (truncated line?)")
            }
            ExtractError::Truncated(Cut::InObject) => {
                f.write_str("ends before the JSON object closes (truncated line?)")
            }
            ExtractError::Truncated(Cut::InArray) => {
                f.write_str("ends before the JSON array closes (truncated line?)")
            }
            ExtractError::OpenStringOrControl => f.write_str(
                "not valid JSON (a string is not closed or holds an unescaped control character)",
            ),
            ExtractError::Invalid { reason, at } => {
                write!(f, "not valid JSON ({reason} at byte {at})")
            }
        }
    }
}

impl std::error::Error for ExtractError {}

impl ExtractError {
    /// `root` is the top-level container the line opens, if it opens one; `last_structural`
    /// the offset of the document's last structural character.
    #[cold]
    fn from_simd(
        e: &simd_json::Error,
        root: Option<Cut>,
        last_structural: Option<usize>,
    ) -> ExtractError {
        use ErrorType as T;
        // Only the first stage reports errors without a character; its "Syntax" means an
        // open string or a raw control character in one. It never writes to the line.
        if e.character().is_none() && matches!(e.error(), T::Syntax) {
            return ExtractError::OpenStringOrControl;
        }
        // The second stage reports a document that runs out of structural characters
        // (a cut line) at its last one: as "Syntax", or for a cut literal (`tru`) as what
        // that literal should have been.
        let at_end = last_structural.is_some_and(|last| e.index() >= last);
        let reason = match e.error() {
            T::InvalidUtf8 => return ExtractError::InvalidUtf8,
            T::DepthLimitExceeded => return ExtractError::TooDeep,
            T::UnterminatedString => return ExtractError::Truncated(Cut::InString),
            T::Eof => "no JSON value",
            T::TrailingData => "more data after the JSON value",
            T::InvalidEscape | T::InvalidUnicodeEscape | T::InvalidUnicodeCodepoint => {
                "invalid escape sequence in a string"
            }
            T::InvalidNumber | T::InvalidExponent => "invalid number",
            T::KeyMustBeAString | T::BadKeyType | T::ExpectedObjectKey => {
                "object key is not a string"
            }
            T::ExpectedObjectColon => "expected ':' after an object key",
            T::ExpectedMapComma | T::ExpectedArrayComma | T::ExpectedMapEnd => {
                "expected ',' or a closing bracket"
            }
            // A wrong character where a member or element should follow, not a cut: a
            // cut line ends with what came before it, and is reported as "Syntax".
            T::ExpectedObjectContent => "expected a string key, ',' or '}' in an object",
            T::ExpectedArrayContent => "expected ',' or ']' in an array",
            T::InputTooLarge => "line too large for the parser (4 GiB)",
            _ => match root {
                Some(cut) if at_end => return ExtractError::Truncated(cut),
                _ => "unexpected character",
            },
        };
        ExtractError::Invalid {
            reason,
            at: e.index(),
        }
    }

    /// Resolves [`ExtractError::OpenStringOrControl`] by reading `line`, the bytes that
    /// were parsed (the parser leaves them untouched when it reports that error): a line
    /// that ends inside a string was cut; otherwise the first raw control character in a
    /// string is named with its offset. [`ExtractError::InvalidUtf8`] for a line cut inside
    /// a multi-byte character of a string becomes a cut too. Other errors are returned as
    /// they are.
    #[cold]
    pub fn pinpoint(self, line: &[u8]) -> ExtractError {
        // simd-json's SIMD first stages check quotes before UTF-8 and its scalar one (32-bit
        // ARM) UTF-8 first: either error can stand for the other, or for both.
        let said_utf8 = match self {
            ExtractError::OpenStringOrControl => false,
            ExtractError::InvalidUtf8 => true,
            other => return other,
        };
        let cut_in_char = match std::str::from_utf8(line) {
            Ok(_) => false,
            // Incomplete at the very end: what a cut leaves.
            Err(e) if e.error_len().is_none() => true,
            Err(_) => return ExtractError::InvalidUtf8,
        };
        let (inside, control) = string_state(line);
        let opens_json = matches!(
            line.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[' | b'"')
        );
        if inside && opens_json {
            return ExtractError::Truncated(Cut::InString);
        }
        match control {
            Some(at) if !said_utf8 => ExtractError::Invalid {
                reason: "unescaped control character in a string",
                at,
            },
            _ if said_utf8 || cut_in_char => ExtractError::InvalidUtf8,
            _ => ExtractError::Invalid {
                reason: "unexpected character",
                at: 0,
            },
        }
    }
}

/// Whether `line` ends inside a string, and the offset of the first raw control character
/// inside one. The rules of simd-json's first stage: a quote after an odd run of
/// backslashes does not count, inside strings or out.
fn string_state(line: &[u8]) -> (bool, Option<usize>) {
    let (mut inside, mut escaped, mut control) = (false, false, None);
    for (i, &b) in line.iter().enumerate() {
        if inside && b < 0x20 && control.is_none() {
            control = Some(i);
        }
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            inside = !inside;
        }
    }
    (inside, control)
}

/// What writing an event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Written {
    /// The event was over the size limit and was trimmed (and marked).
    pub truncated: bool,
}

/// Reusable parser state. One per thread; feed it lines one after another.
pub struct Extractor {
    buffers: Buffers,
    /// Always empty between calls; lent to the [`Event`] of the current line.
    tape: Tape<'static>,
    roles: Vec<u32>,
    max_event_bytes: usize,
    /// Whether the `audit` form copies kept members from the line (see [`Extractor::parse`]).
    byte_ranges: bool,
    /// The current line as it was before parsing, when `byte_ranges`.
    original: Vec<u8>,
}

impl Default for Extractor {
    fn default() -> Self {
        Self::new()
    }
}

impl Extractor {
    pub fn new() -> Extractor {
        Extractor {
            buffers: Buffers::with_max_depth(64 * 1024, MAX_DEPTH),
            tape: Tape(Vec::new()),
            roles: Vec::new(),
            max_event_bytes: MAX_EVENT_BYTES,
            byte_ranges: true,
            original: Vec::new(),
        }
    }

    /// Whether the `audit` form copies the members it keeps whole from the line as byte
    /// ranges (the default) or re-serialises them from the tape. Both give the same JSON
    /// value; the ranges cost one copy of the line per parse and save most of the writing
    /// (BENCHMARKS.md §2). Off, nothing is copied.
    pub fn with_byte_ranges(mut self, on: bool) -> Extractor {
        self.byte_ranges = on;
        self
    }

    /// Sets the largest `audit`/`ecs` output (at least 1 KiB, so a trimmed event still
    /// carries its identity).
    pub fn with_max_event_bytes(mut self, max: usize) -> Extractor {
        self.max_event_bytes = max.max(1024);
        self
    }

    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// Parses the line `buf[..len]` **in place** (its bytes are rewritten: copy first if the
    /// raw line is still needed). When `buf` has [`INPUT_PADDING`] bytes after the line, the
    /// parser reads them instead of copying the line; their content does not matter and is
    /// left unchanged.
    ///
    /// The error may be [`ExtractError::OpenStringOrControl`], which
    /// [`ExtractError::pinpoint`] resolves from the line (still as it was then). It cannot be
    /// resolved here: the returned event borrows `buf` for `'a` whether parsing succeeds or
    /// not, so the line cannot be read again after the parse.
    pub fn parse<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        len: usize,
    ) -> Result<Event<'a>, ExtractError> {
        let keep = self.byte_ranges;
        self.parse_keeping(buf, len, keep)
    }

    /// [`Extractor::parse`]; `keep_original` copies the line first, for the `audit` writer's
    /// byte ranges (simd-json rewrites escaped strings in place, so the parsed buffer no
    /// longer holds the line; structural characters and unescaped text stay where they were,
    /// which is what lets a tape string's address give its offset in the copy).
    fn parse_keeping<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        len: usize,
        keep_original: bool,
    ) -> Result<Event<'a>, ExtractError> {
        let Extractor {
            buffers,
            tape: home,
            roles,
            max_event_bytes,
            original,
            ..
        } = self;
        original.clear();
        if keep_original {
            original.extend_from_slice(&buf[..len.min(buf.len())]);
        }
        let base = buf.as_ptr() as usize;
        // Only a document that opens an object or array can be cut off between its members
        // (read now: the parse borrows the line).
        let root = match buf[..len.min(buf.len())]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
        {
            Some(b'{') => Some(Cut::InObject),
            Some(b'[') => Some(Cut::InArray),
            _ => None,
        };
        let mut tape: Tape<'a> = std::mem::replace(home, Tape(Vec::new())).reset();
        let padded = buf.len() >= len.saturating_add(INPUT_PADDING);
        let parsed = if padded {
            simd_json::fill_tape_padded(buf, len, buffers, &mut tape)
        } else {
            let len = len.min(buf.len());
            simd_json::fill_tape(&mut buf[..len], buffers, &mut tape)
        };
        let root = match parsed {
            Ok(()) => tape.0.first().copied(),
            Err(e) => {
                *home = tape.reset();
                let structurals = buffers.structural_indexes();
                let last = structurals
                    .iter()
                    .rev()
                    .map(|&i| i as usize)
                    .find(|&i| i < len);
                return Err(ExtractError::from_simd(
                    &e,
                    root,
                    last.filter(|_| root.is_some()),
                ));
            }
        };
        let kind = match root {
            Some(Node::Object { .. }) => None,
            Some(Node::Array { .. }) => Some("array"),
            Some(Node::String(_)) => Some("string"),
            Some(Node::Static(simd_json::StaticNode::Null)) => Some("null"),
            Some(Node::Static(simd_json::StaticNode::Bool(_))) => Some("boolean"),
            Some(Node::Static(_)) => Some("number"),
            None => Some("empty document"),
        };
        if let Some(kind) = kind {
            *home = tape.reset();
            return Err(ExtractError::NotAnObject(kind));
        }
        let fields = Fields::locate(&tape.0);
        Ok(Event {
            tape,
            home,
            roles,
            fields,
            raw_len: len,
            max_event_bytes: *max_event_bytes,
            original: audit::Original {
                bytes: original,
                base,
            },
        })
    }

    /// Appends the output for the line `buf[..len]` to `out` (no newline). On error `out` is
    /// unchanged and the error [pinpointed](ExtractError::pinpoint). `buf` is parsed in
    /// place, as in [`Extractor::parse`].
    pub fn extract(
        &mut self,
        buf: &mut [u8],
        len: usize,
        format: Format,
        out: &mut Vec<u8>,
    ) -> Result<Written, ExtractError> {
        let result = match format {
            Format::Raw => {
                // Copy before parsing rewrites the line; validate, then keep the copy.
                let start = out.len();
                out.extend_from_slice(&buf[..len]);
                let result = self
                    .parse_keeping(buf, len, false)
                    .map(|_| Written::default());
                if result.is_err() {
                    out.truncate(start);
                }
                result
            }
            _ => {
                let keep = self.byte_ranges && format == Format::Audit;
                self.parse_keeping(buf, len, keep)
                    .map(|mut event| event.write(format, out))
            }
        };
        // The event (and its borrow of the line) is gone: the line can be read again.
        result.map_err(|e| e.pinpoint(&buf[..len.min(buf.len())]))
    }
}

/// One parsed audit event, borrowing the line and the [`Extractor`]'s tape.
pub struct Event<'a> {
    tape: Tape<'a>,
    home: &'a mut Tape<'static>,
    roles: &'a mut Vec<u32>,
    fields: Fields,
    raw_len: usize,
    max_event_bytes: usize,
    /// The line before parsing (empty when not kept).
    original: audit::Original<'a>,
}

impl Drop for Event<'_> {
    fn drop(&mut self) {
        // Hand the tape's allocation back for the next line.
        *self.home = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
    }
}

impl<'a> Event<'a> {
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The string at a located field, if the field is present and a string.
    pub fn text(&self, field: Option<u32>) -> Option<&'a str> {
        match self.tape.0.get(field? as usize)? {
            Node::String(s) => Some(*s),
            _ => None,
        }
    }

    pub fn verb(&self) -> Option<&'a str> {
        self.text(self.fields.verb)
    }

    pub fn audit_id(&self) -> Option<&'a str> {
        self.text(self.fields.audit_id)
    }

    pub fn stage(&self) -> Option<&'a str> {
        self.text(self.fields.stage)
    }

    /// `requestReceivedTimestamp` as written by the API server (RFC 3339, UTC).
    pub fn request_received(&self) -> Option<&'a str> {
        self.text(self.fields.request_received)
    }

    /// The number at a located field, if it is an integer.
    pub fn int(&self, field: Option<u32>) -> Option<i64> {
        match self.tape.0.get(field? as usize)? {
            Node::Static(simd_json::StaticNode::I64(n)) => Some(*n),
            Node::Static(simd_json::StaticNode::U64(n)) => i64::try_from(*n).ok(),
            _ => None,
        }
    }

    /// Whether a located field is the JSON `true`.
    pub fn is_true(&self, field: Option<u32>) -> bool {
        self.boolean(field) == Some(true)
    }

    /// The boolean at a located field, if it is one.
    pub fn boolean(&self, field: Option<u32>) -> Option<bool> {
        match self.tape.0.get(field? as usize)? {
            Node::Static(simd_json::StaticNode::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// Tape indexes of the elements of the array at a located field (none if it is absent
    /// or not an array).
    fn elements(&self, field: Option<u32>) -> impl Iterator<Item = usize> + '_ {
        let nodes = &self.tape.0;
        let (start, len) = match field.and_then(|i| Some((i as usize, nodes.get(i as usize)?))) {
            Some((i, Node::Array { len, .. })) => (i + 1, *len),
            _ => (0, 0),
        };
        let mut j = start;
        (0..len).map(move |_| {
            let at = j;
            j += json::span(nodes, j);
            at
        })
    }

    /// The strings in the array at a located field (other elements skipped).
    pub fn strings(&self, field: Option<u32>) -> impl Iterator<Item = &'a str> + '_ {
        self.elements(field).filter_map(|j| match self.tape.0[j] {
            Node::String(s) => Some(s),
            _ => None,
        })
    }

    /// `sourceIPs[0]` when it is a valid IP address (the ECS `source.ip`).
    pub fn source_ip(&self) -> Option<&'a str> {
        ecs::source_ip(&self.tape.0, &self.fields)
    }

    /// Whether the array at a located field holds the string `s`.
    pub fn array_has(&self, field: Option<u32>, s: &str) -> bool {
        self.elements(field)
            .any(|j| self.tape.0[j] == Node::String(s))
    }

    /// Whether some element of the array at a located field is an object with a member
    /// (key, value index) for which `test` holds.
    fn any_element(&self, field: Option<u32>, mut test: impl FnMut(&str, usize) -> bool) -> bool {
        self.elements(field).any(|j| {
            let mut hit = false;
            fields::members(&self.tape.0, j, |k, v| hit |= test(k, v));
            hit
        })
    }

    /// A container of the requested pod runs privileged (`securityContext.privileged`).
    pub fn has_privileged_container(&self) -> bool {
        let nodes = &self.tape.0;
        self.any_element(self.fields.spec_containers, |k, v| {
            let mut privileged = false;
            if k == "securityContext" {
                fields::members(nodes, v, |k, w| {
                    privileged |= k == "privileged"
                        && matches!(nodes[w], Node::Static(simd_json::StaticNode::Bool(true)));
                });
            }
            privileged
        })
    }

    /// A volume of the requested pod mounts a host path.
    pub fn has_host_path_volume(&self) -> bool {
        self.any_element(self.fields.spec_volumes, |k, _| k == "hostPath")
    }

    /// Length in bytes of the line this event was parsed from.
    pub fn raw_len(&self) -> usize {
        self.raw_len
    }

    /// Appends the `audit` or `ecs` form to `out` (no newline), trimmed if needed to stay
    /// within the size limit. [`Format::Raw`] is written by [`Extractor::extract`], which
    /// still has the unparsed line; here it falls back to `audit`.
    pub fn write(&mut self, format: Format, out: &mut Vec<u8>) -> Written {
        let start = out.len();
        let mut unlimited = usize::MAX;
        self.render(format, out, Limits::NONE, &mut unlimited);
        if out.len() - start <= self.max_event_bytes {
            return Written { truncated: false };
        }
        self.write_trimmed(format, out, start);
        Written { truncated: true }
    }

    /// As [`Event::write`], within `max` bytes instead of the extractor's limit (at least
    /// 1 KiB). For a caller whose own encoding of the output grows it: an `/array` entry
    /// escapes the event, and the intake's limit applies to the escaped text.
    pub fn write_within(&mut self, format: Format, out: &mut Vec<u8>, max: usize) -> Written {
        let saved = self.max_event_bytes;
        self.max_event_bytes = max.max(1024);
        let written = self.write(format, out);
        self.max_event_bytes = saved;
        written
    }

    /// Re-renders an oversized event at increasing trimming levels until it fits:
    /// 1. pod-spec arrays cut to the room the rest leaves;
    /// 2. also every string cut to [`TRIM_STRING_CAP`], and nothing kept past the limit;
    /// 3. as 2, without the pod-spec arrays.
    ///
    /// Level 2 cannot exceed the limit by construction (`hard_end`); level 3 is the
    /// belt to its braces.
    #[cold]
    fn write_trimmed(&mut self, format: Format, out: &mut Vec<u8>, start: usize) {
        let room = self.max_event_bytes.saturating_sub(TRIM_RESERVE);
        let capped = Limits {
            string_cap: TRIM_STRING_CAP,
            hard_end: start + room,
        };
        for (limits, bulky) in [(Limits::NONE, true), (capped, true), (capped, false)] {
            out.truncate(start);
            // The event without its pod-spec arrays tells how much room they may have.
            self.render(format, out, limits, &mut 0);
            let skeleton = out.len() - start;
            if skeleton > room {
                continue;
            }
            if bulky {
                out.truncate(start);
                self.render(format, out, limits, &mut (room - skeleton));
            }
            if out.len() - start <= room {
                break;
            }
        }
        self.mark_truncated(out, start);
    }

    fn mark_truncated(&self, out: &mut Vec<u8>, start: usize) {
        if out.last() == Some(&b'}') {
            out.pop();
        }
        if out.len() > start + 1 {
            out.push(b',');
        }
        let _ = write!(
            out,
            "\"kube_audit_shipper\":{{\"truncated\":true,\"original_bytes\":{}}}}}",
            self.raw_len
        );
    }

    fn render(&mut self, format: Format, out: &mut Vec<u8>, limits: Limits, bulky: &mut usize) {
        match format {
            Format::Ecs => ecs::write(&self.tape.0, &self.fields, out, limits, bulky, self.roles),
            Format::Audit | Format::Raw => {
                // Byte ranges only for the untrimmed form: trimming cuts inside values.
                let ranges = !self.original.bytes.is_empty()
                    && limits.is_none()
                    && *bulky == usize::MAX
                    && audit::write_ranges(&self.tape.0, self.original, out);
                if !ranges {
                    audit::write(&self.tape.0, out, limits, bulky);
                }
            }
        }
    }
}
