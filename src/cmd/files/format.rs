//! What `ls` and `stat` print: aligned columns and `field: value` lines for people, JSON for
//! scripts. The library answers with typed entries ([`OwnedDirEntry`], [`FileInfo`]); turning
//! them into text is the command line's business, so it is done here.
//!
//! The JSON is written by `serde_json` (escaping included), the UTC dates by `time`; both give
//! the same bytes the hand-written versions gave before, which the tests pin down.

use std::borrow::Cow;
use std::fmt::Write as _;

use monoreactor::client::files::{OwnedDirEntry, hex};
use monoreactor::proto::files::{FileInfo, FileKind};
use serde::Serialize;
use time::OffsetDateTime;

/// A listing in aligned columns, one line per entry, in the order given: the kind's letter
/// (`-`, `d`, `l`, `?`), the size right-aligned, the modification time to the minute and the
/// name ([`display_name`]).
pub fn listing(entries: &[OwnedDirEntry]) -> String {
    let width = entries
        .iter()
        .map(|entry| decimal_width(entry.size))
        .max()
        .unwrap_or(1);
    let mut out = String::new();
    for entry in entries {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{} {:>width$} {} {}",
            entry.kind.letter(),
            entry.size,
            mtime_to_the_minute(entry.mtime_ns),
            display_name(&entry.name)
        );
    }
    out
}

/// One entry of `ls --json`, its keys in this order.
#[derive(Serialize)]
struct EntryJson<'a> {
    name: &'a str,
    kind: &'static str,
    size: u64,
    mtime_ns: i64,
}

/// A listing as one JSON array, one compact object per line, in the order given, ending with
/// a newline: `[\n{"name":...,"kind":...,"size":...,"mtime_ns":...},\n...\n]\n`.
pub fn listing_json(entries: &[OwnedDirEntry]) -> Result<String, serde_json::Error> {
    if entries.is_empty() {
        return Ok("[]\n".to_string());
    }
    let objects = entries
        .iter()
        .map(|entry| {
            serde_json::to_string(&EntryJson {
                name: &entry.name,
                kind: kind_name(entry.kind),
                size: entry.size,
                mtime_ns: entry.mtime_ns,
            })
        })
        .collect::<Result<Vec<String>, _>>()?;
    Ok(format!("[\n{}\n]\n", objects.join(",\n")))
}

/// STAT's answer for people: one `field: value` line each.
pub fn info(path: &str, info: &FileInfo) -> String {
    let shown = if path.is_empty() { "." } else { path };
    let hash = info
        .hash
        .map_or_else(|| "not known to the server".to_string(), |hash| hex(&hash));
    format!(
        "path:   {}\nkind:   {}\nsize:   {}\nmtime:  {}\nblake3: {hash}\n",
        display_name(shown),
        kind_name(info.kind),
        info.size,
        mtime_to_the_nanosecond(info.mtime_ns)
    )
}

/// `stat --json`'s object, its keys in this order.
#[derive(Serialize)]
struct InfoJson<'a> {
    path: &'a str,
    kind: &'static str,
    size: u64,
    mtime_ns: i64,
    /// The hex hash, or `null` when the server does not know it.
    blake3: Option<String>,
}

/// STAT's answer as one JSON object on one line: the path, then FILE_INFO's fields.
pub fn info_json(path: &str, info: &FileInfo) -> Result<String, serde_json::Error> {
    let object = serde_json::to_string(&InfoJson {
        path,
        kind: kind_name(info.kind),
        size: info.size,
        mtime_ns: info.mtime_ns,
        blake3: info.hash.as_ref().map(hex),
    })?;
    Ok(object + "\n")
}

/// The kind as a word, for JSON and `stat`.
fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
        FileKind::Partial => "partial upload",
    }
}

/// `YYYY-MM-DD HH:MM`, UTC, as listings show a modification time.
fn mtime_to_the_minute(mtime_ns: i64) -> String {
    match utc(mtime_ns) {
        Some(time) => format!("{} {:02}:{:02}", date(time), time.hour(), time.minute()),
        None => mtime_ns.to_string(),
    }
}

/// `YYYY-MM-DD HH:MM:SS.NNNNNNNNN UTC`: a modification time to the nanosecond.
fn mtime_to_the_nanosecond(mtime_ns: i64) -> String {
    match utc(mtime_ns) {
        Some(time) => format!(
            "{} {:02}:{:02}:{:02}.{:09} UTC",
            date(time),
            time.hour(),
            time.minute(),
            time.second(),
            time.nanosecond()
        ),
        None => mtime_ns.to_string(),
    }
}

/// Nanoseconds since the epoch as a UTC date and time (proleptic Gregorian). Every `i64` of
/// nanoseconds (1677 to 2262) is within `time`'s years (±9999), so `None` does not happen;
/// the callers would then show the plain number rather than panic.
fn utc(mtime_ns: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(mtime_ns)).ok()
}

/// `YYYY-MM-DD`.
fn date(time: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        time.year(),
        u8::from(time.month()),
        time.day()
    )
}

/// A name as a terminal line may show it: control characters escaped (`\n`, `\u{1b}`), so a
/// name cannot break a listing's lines or drive the terminal.
fn display_name(name: &str) -> Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return Cow::Borrowed(name);
    }
    let mut shown = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// How many digits `value` has in decimal: the width of the size column.
fn decimal_width(mut value: u64) -> usize {
    let mut width = 1;
    while value >= 10 {
        value /= 10;
        width += 1;
    }
    width
}

#[cfg(test)]
mod tests {
    use super::*;

    use monoreactor::client::files::sort_entries;
    use monoreactor::proto::files::{HASH_LEN, Hash};

    const SECOND: i64 = 1_000_000_000;
    const ZERO_HASH: Hash = [0; HASH_LEN];

    #[test]
    fn mtimes_format_in_utc_across_the_epoch_and_leap_days() {
        assert_eq!(mtime_to_the_minute(0), "1970-01-01 00:00");
        assert_eq!(mtime_to_the_minute(-1), "1969-12-31 23:59");
        assert_eq!(
            mtime_to_the_minute(1_700_000_000 * SECOND),
            "2023-11-14 22:13"
        );
        assert_eq!(
            mtime_to_the_minute(951_782_400 * SECOND),
            "2000-02-29 00:00"
        );
        assert_eq!(
            mtime_to_the_minute(951_868_799 * SECOND),
            "2000-02-29 23:59"
        );
        assert_eq!(
            mtime_to_the_minute(4_107_542_400 * SECOND),
            "2100-03-01 00:00"
        );
        assert_eq!(
            mtime_to_the_nanosecond(1_700_000_000 * SECOND + 5),
            "2023-11-14 22:13:20.000000005 UTC"
        );
        assert_eq!(
            mtime_to_the_nanosecond(-1),
            "1969-12-31 23:59:59.999999999 UTC"
        );
        assert_eq!(
            mtime_to_the_nanosecond(i64::MIN),
            "1677-09-21 00:12:43.145224192 UTC"
        );
        assert_eq!(
            mtime_to_the_nanosecond(i64::MAX),
            "2262-04-11 23:47:16.854775807 UTC"
        );
    }

    /// One entry named `name`, for the JSON escaping checks.
    fn named(name: &str) -> String {
        listing_json(&[entry(name, FileKind::File, 0, 0)]).expect("JSON")
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let object = |escaped: &str| {
            format!("[\n{{\"name\":{escaped},\"kind\":\"file\",\"size\":0,\"mtime_ns\":0}}\n]\n")
        };
        assert_eq!(named("plain"), object("\"plain\""));
        assert_eq!(named("a\"b\\c"), object("\"a\\\"b\\\\c\""));
        assert_eq!(named("l1\nl2\t\r"), object("\"l1\\nl2\\t\\r\""));
        assert_eq!(
            named("\u{1}\u{1f}\u{8}\u{c}"),
            object("\"\\u0001\\u001f\\b\\f\"")
        );
        assert_eq!(named("é ✓ \u{7f}"), object("\"é ✓ \u{7f}\""));
    }

    fn entry(name: &str, kind: FileKind, size: u64, mtime_ns: i64) -> OwnedDirEntry {
        OwnedDirEntry {
            name: name.to_string(),
            kind,
            size,
            mtime_ns,
        }
    }

    #[test]
    fn listings_sort_by_name_and_align_sizes() {
        let mut entries = vec![
            entry("zeta", FileKind::File, 7, 0),
            entry("Alpha", FileKind::Directory, 4096, 60 * SECOND),
            entry("link", FileKind::Symlink, 12, 0),
            entry("bad\nname", FileKind::Other, 0, 0),
        ];
        sort_entries(&mut entries);
        assert_eq!(
            listing(&entries),
            "d 4096 1970-01-01 00:01 Alpha\n\
             ?    0 1970-01-01 00:00 bad\\nname\n\
             l   12 1970-01-01 00:00 link\n\
             -    7 1970-01-01 00:00 zeta\n"
        );
        assert_eq!(listing(&[]), "");
    }

    #[test]
    fn listings_as_json_are_one_array() {
        let entries = [
            entry("a \"q\"", FileKind::File, 1, -2),
            entry("d", FileKind::Directory, 0, 3),
        ];
        assert_eq!(
            listing_json(&entries).expect("JSON"),
            "[\n{\"name\":\"a \\\"q\\\"\",\"kind\":\"file\",\"size\":1,\"mtime_ns\":-2},\n\
             {\"name\":\"d\",\"kind\":\"directory\",\"size\":0,\"mtime_ns\":3}\n]\n"
        );
        assert_eq!(listing_json(&[]).expect("JSON"), "[]\n");
    }

    #[test]
    fn stat_output_names_an_unknown_hash() {
        let mut stat = FileInfo {
            size: 3,
            mtime_ns: 0,
            kind: FileKind::File,
            hash: None,
        };
        assert_eq!(
            info_json("x\ty", &stat).expect("JSON"),
            "{\"path\":\"x\\ty\",\"kind\":\"file\",\"size\":3,\"mtime_ns\":0,\"blake3\":null}\n"
        );
        assert!(info("", &stat).starts_with("path:   .\n"));
        assert!(info("a", &stat).ends_with("blake3: not known to the server\n"));
        stat.hash = Some(ZERO_HASH);
        assert!(
            info_json("a", &stat)
                .expect("JSON")
                .ends_with(&format!("\"blake3\":\"{}\"}}\n", "0".repeat(64)))
        );
    }

    #[test]
    fn names_with_control_characters_are_escaped_for_terminals() {
        assert!(matches!(display_name("plain é"), Cow::Borrowed("plain é")));
        assert_eq!(display_name("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
    }
}
