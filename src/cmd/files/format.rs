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

/// How a listing shows its entries' sizes and times.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// `ls -l`: times as `ls -l` shows them, in the local time zone (`Dec  7 21:02`, or
    /// `Dec  7  2025` when older than six months or in the future), given the time now in
    /// seconds since the epoch. `None`: UTC, `YYYY-MM-DD HH:MM`.
    pub local_now: Option<i64>,
    /// `ls -h`: sizes as [`human_size`] writes them.
    pub human: bool,
}

/// A listing in aligned columns, one line per entry, in the order given: the kind's letter
/// (`-`, `d`, `l`, `?`, `u`), the size right-aligned, the modification time and the name
/// ([`display_name`]), sizes and times as `style` says.
pub fn listing(entries: &[OwnedDirEntry], style: Style) -> String {
    let sizes: Vec<String> = entries
        .iter()
        .map(|entry| {
            if style.human {
                human_size(entry.size)
            } else {
                entry.size.to_string()
            }
        })
        .collect();
    let width = sizes.iter().map(String::len).max().unwrap_or(1);
    let mut out = String::new();
    for (entry, size) in entries.iter().zip(&sizes) {
        let time = match style.local_now {
            Some(now) => ls_time(entry.mtime_ns, now),
            None => mtime_to_the_minute(entry.mtime_ns),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{} {size:>width$} {time} {}",
            entry.kind.letter(),
            display_name(&entry.name)
        );
    }
    out
}

/// A size as `ls -h` shows it: bytes below 1024 as they are, then powers of 1024 with one
/// letter (K, M, G, T, P, E), rounded up as ls rounds: one decimal below 10 (`1.0K`,
/// `9.9M`), whole numbers from 10 (`10K`, `23M`, `1023G`).
pub fn human_size(size: u64) -> String {
    if size < 1024 {
        return size.to_string();
    }
    let size = u128::from(size);
    let mut unit = 1024u128;
    for letter in ['K', 'M', 'G', 'T', 'P', 'E'] {
        let tenths = (size * 10).div_ceil(unit);
        if tenths < 100 {
            return format!("{}.{}{letter}", tenths / 10, tenths % 10);
        }
        let whole = size.div_ceil(unit);
        if whole < 1024 {
            return format!("{whole}{letter}");
        }
        unit *= 1024;
    }
    // u64::MAX is 16E: the loop has returned by then.
    format!("{}E", size.div_ceil(1 << 60))
}

/// Half of an average Gregorian year: ls's "older than six months".
const SIX_MONTHS_S: i64 = 31_556_952 / 2;

/// A modification time as `ls -l` shows it in the local time zone: `Dec  7 21:02` if within
/// the last six months, else `Dec  7  2025` (so also for a time in the future).
pub fn ls_time(mtime_ns: i64, now_s: i64) -> String {
    let secs = mtime_ns.div_euclid(1_000_000_000);
    let recent = now_s - SIX_MONTHS_S < secs && secs <= now_s;
    match local_time(secs) {
        Some(local) => ls_date(&local, recent),
        None => mtime_ns.to_string(),
    }
}

/// The fields of a local time that a listing shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LocalTime {
    year: i64,
    /// 0 for January.
    month0: usize,
    day: u8,
    hour: u8,
    minute: u8,
}

/// `Mon dd HH:MM` or `Mon dd  YYYY` (`%b %e %H:%M`, `%b %e  %Y` in the C locale).
fn ls_date(local: &LocalTime, recent: bool) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.get(local.month0).copied().unwrap_or("???");
    if recent {
        format!(
            "{month} {:>2} {:02}:{:02}",
            local.day, local.hour, local.minute
        )
    } else {
        format!("{month} {:>2} {:>5}", local.day, local.year)
    }
}

/// Seconds since the epoch in the local time zone, by the C library (`localtime_r`), which
/// reads `TZ` and the system's zone files as every other program does.
fn local_time(secs: i64) -> Option<LocalTime> {
    let time = libc::time_t::try_from(secs).ok()?;
    // SAFETY: `tm` is plain data, all zeroes is a valid value; localtime_r only writes into
    // the `tm` it is given and reads `time`, both live for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let filled = unsafe { libc::localtime_r(&time, &mut tm) };
    if filled.is_null() {
        return None;
    }
    Some(LocalTime {
        year: i64::from(tm.tm_year) + 1900,
        month0: usize::try_from(tm.tm_mon).ok()?,
        day: u8::try_from(tm.tm_mday).ok()?,
        hour: u8::try_from(tm.tm_hour).ok()?,
        minute: u8::try_from(tm.tm_min).ok()?,
    })
}

/// One entry of `ls --json`, its keys in this order.
#[derive(Serialize)]
struct EntryJson<'a> {
    name: &'a str,
    kind: &'static str,
    size: u64,
    mtime_ns: i64,
    path: &'a str,
}

/// An entry of a listing and its path from the server's root, for [`listing_json`].
pub struct Listed {
    /// The entry, named as the listing shows it.
    pub entry: OwnedDirEntry,
    /// Its request path.
    pub path: String,
}

/// A listing as one JSON array, one compact object per line, in the order given, ending with
/// a newline: `[\n{"name":...,"kind":...,"size":...,"mtime_ns":...,"path":...},\n...\n]\n`.
pub fn listing_json(entries: &[Listed]) -> Result<String, serde_json::Error> {
    if entries.is_empty() {
        return Ok("[]\n".to_string());
    }
    let objects = entries
        .iter()
        .map(|Listed { entry, path }| {
            serde_json::to_string(&EntryJson {
                name: &entry.name,
                kind: kind_name(entry.kind),
                size: entry.size,
                mtime_ns: entry.mtime_ns,
                path,
            })
        })
        .collect::<Result<Vec<String>, _>>()?;
    Ok(format!("[\n{}\n]\n", objects.join(",\n")))
}

/// STAT's answer for people: one `field: value` line each; the mode's line only if the
/// server sent it.
pub fn info(path: &str, info: &FileInfo, mode: Option<u32>) -> String {
    let shown = if path.is_empty() { "." } else { path };
    let hash = info
        .hash
        .map_or_else(|| "not known to the server".to_string(), |hash| hex(&hash));
    let mode = mode.map_or_else(String::new, |mode| {
        format!(
            "mode:   {:04o} ({})\n",
            mode & 0o777,
            mode_letters(info.kind, mode)
        )
    });
    format!(
        "path:   {}\nkind:   {}\nsize:   {}\nmtime:  {}\n{mode}blake3: {hash}\n",
        display_name(shown),
        kind_name(info.kind),
        info.size,
        mtime_to_the_nanosecond(info.mtime_ns)
    )
}

/// A mode as `ls -l` shows it: the kind's letter, then `rwx` for owner, group and others.
pub fn mode_letters(kind: FileKind, mode: u32) -> String {
    let mut letters = String::with_capacity(10);
    letters.push(kind.letter());
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        letters.push(if bits & 0o4 != 0 { 'r' } else { '-' });
        letters.push(if bits & 0o2 != 0 { 'w' } else { '-' });
        letters.push(if bits & 0o1 != 0 { 'x' } else { '-' });
    }
    letters
}

/// `stat --json`'s object, its keys in this order.
#[derive(Serialize)]
struct InfoJson<'a> {
    path: &'a str,
    kind: &'static str,
    size: u64,
    mtime_ns: i64,
    /// The permission bits, or `null` from a server that does not send them.
    mode: Option<u32>,
    /// The hex hash, or `null` when the server does not know it.
    blake3: Option<String>,
}

/// STAT's answer as one JSON object on one line: the path, then FILE_INFO's fields.
pub fn info_json(
    path: &str,
    info: &FileInfo,
    mode: Option<u32>,
) -> Result<String, serde_json::Error> {
    let object = serde_json::to_string(&InfoJson {
        path,
        kind: kind_name(info.kind),
        size: info.size,
        mtime_ns: info.mtime_ns,
        mode: mode.map(|mode| mode & 0o777),
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
/// name cannot break a listing's lines or drive the terminal; so are the characters that
/// reorder or break a line without being controls (bidi overrides such as U+202E, which make
/// `evil\u{202e}txt.exe` look like `evilexe.txt`; U+2028 and U+2029), and the backslash
/// itself, so that an escape cannot be mistaken for a name that has one.
pub fn display_name(name: &str) -> Cow<'_, str> {
    if !name.chars().any(needs_escape) {
        return Cow::Borrowed(name);
    }
    let mut shown = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if needs_escape(c) {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// Whether [`display_name`] escapes `c`.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(
            c,
            // Bidi marks, embeddings, overrides and isolates; line and paragraph separators.
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{2028}' | '\u{2029}'
        )
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
        listing_json(&[listed(name, "p", FileKind::File, 0, 0)]).expect("JSON")
    }

    fn listed(name: &str, path: &str, kind: FileKind, size: u64, mtime_ns: i64) -> Listed {
        Listed {
            entry: entry(name, kind, size, mtime_ns),
            path: path.to_string(),
        }
    }

    const UTC: Style = Style {
        local_now: None,
        human: false,
    };

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let object = |escaped: &str| {
            format!(
                "[\n{{\"name\":{escaped},\"kind\":\"file\",\"size\":0,\"mtime_ns\":0,\"path\":\"p\"}}\n]\n"
            )
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
            listing(&entries, UTC),
            "d 4096 1970-01-01 00:01 Alpha\n\
             ?    0 1970-01-01 00:00 bad\\nname\n\
             l   12 1970-01-01 00:00 link\n\
             -    7 1970-01-01 00:00 zeta\n"
        );
        assert_eq!(listing(&[], UTC), "");
        let human = Style {
            local_now: None,
            human: true,
        };
        assert_eq!(
            listing(&entries, human),
            "d 4.0K 1970-01-01 00:01 Alpha\n\
             ?    0 1970-01-01 00:00 bad\\nname\n\
             l   12 1970-01-01 00:00 link\n\
             -    7 1970-01-01 00:00 zeta\n"
        );
    }

    #[test]
    fn human_sizes_round_up_as_ls_does() {
        // Each as GNU ls -lh shows it.
        let cases: [(u64, &str); 18] = [
            (0, "0"),
            (10_188, "10K"),
            (5_368_709_121, "5.1G"),
            (1023, "1023"),
            (1024, "1.0K"),
            (1025, "1.1K"),
            (1536, "1.5K"),
            (10 * 1024 - 1, "10K"),
            (10 * 1024, "10K"),
            (10 * 1024 + 1, "11K"),
            (1024 * 1024 - 1, "1.0M"),
            (1024 * 1024, "1.0M"),
            (23 * 1024 * 1024, "23M"),
            (23 * 1024 * 1024 + 1, "24M"),
            (5 << 30, "5.0G"),
            (1 << 40, "1.0T"),
            (1 << 60, "1.0E"),
            (u64::MAX, "16E"),
        ];
        for (size, shown) in cases {
            assert_eq!(human_size(size), shown, "{size} bytes");
        }
    }

    #[test]
    fn ls_dates_show_the_time_when_recent_and_the_year_otherwise() {
        let local = LocalTime {
            year: 2025,
            month0: 11,
            day: 7,
            hour: 21,
            minute: 2,
        };
        assert_eq!(ls_date(&local, true), "Dec  7 21:02");
        assert_eq!(ls_date(&local, false), "Dec  7  2025");
        let local = LocalTime {
            year: 1999,
            month0: 0,
            day: 31,
            hour: 0,
            minute: 5,
        };
        assert_eq!(ls_date(&local, true), "Jan 31 00:05");
        assert_eq!(ls_date(&local, false), "Jan 31  1999");
    }

    #[test]
    fn ls_times_are_recent_within_six_months_and_not_in_the_future() {
        // Whatever the zone, the shape tells which form was chosen.
        let now = 1_765_000_000;
        let has_clock = |text: String| text.as_bytes()[9] == b':';
        assert!(has_clock(ls_time(now * SECOND, now)));
        assert!(has_clock(ls_time((now - SIX_MONTHS_S + 1) * SECOND, now)));
        assert!(!has_clock(ls_time((now - SIX_MONTHS_S) * SECOND, now)));
        assert!(!has_clock(ls_time((now + 1) * SECOND, now)));
        assert!(!has_clock(ls_time(0, now)));
        assert_eq!(ls_time(i64::MIN, now).len(), 12);
    }

    #[test]
    fn listings_as_json_are_one_array() {
        let entries = [
            listed("a \"q\"", "a \"q\"", FileKind::File, 1, -2),
            listed("d", "x/d", FileKind::Directory, 0, 3),
        ];
        assert_eq!(
            listing_json(&entries).expect("JSON"),
            "[\n{\"name\":\"a \\\"q\\\"\",\"kind\":\"file\",\"size\":1,\"mtime_ns\":-2,\"path\":\"a \\\"q\\\"\"},\n\
             {\"name\":\"d\",\"kind\":\"directory\",\"size\":0,\"mtime_ns\":3,\"path\":\"x/d\"}\n]\n"
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
            info_json("x\ty", &stat, None).expect("JSON"),
            "{\"path\":\"x\\ty\",\"kind\":\"file\",\"size\":3,\"mtime_ns\":0,\"mode\":null,\"blake3\":null}\n"
        );
        assert!(info("", &stat, None).starts_with("path:   .\n"));
        assert!(info("a", &stat, None).ends_with("blake3: not known to the server\n"));
        assert!(!info("a", &stat, None).contains("mode:"), "an older server");
        assert!(
            info("a", &stat, Some(0o4640)).contains("\nmode:   0640 (-rw-r-----)\nblake3:"),
            "permission bits only"
        );
        assert!(
            info_json("a", &stat, Some(0o750))
                .expect("JSON")
                .contains("\"mode\":488,")
        );
        stat.hash = Some(ZERO_HASH);
        assert!(
            info_json("a", &stat, None)
                .expect("JSON")
                .ends_with(&format!("\"blake3\":\"{}\"}}\n", "0".repeat(64)))
        );
    }

    #[test]
    fn names_with_control_characters_are_escaped_for_terminals() {
        assert!(matches!(display_name("plain é"), Cow::Borrowed("plain é")));
        assert_eq!(display_name("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(display_name("x\u{202e}txt.exe"), "x\\u{202e}txt.exe");
        assert_eq!(display_name("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(
            display_name("a\\nb"),
            "a\\\\nb",
            "unlike the escape of a newline"
        );
        assert_eq!(display_name("a\nb"), "a\\nb");
    }
}
