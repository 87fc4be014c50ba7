//! `serve --config FILE`: a TOML file whose keys are `serve`'s flags.
//!
//! The keys are not listed anywhere: they are the long names (and visible aliases) of the
//! flags in clap's own definition of `serve` ([`keys`]), so a flag added to `ServeArgs` is a
//! key from then on. Hidden flags (`--worker-of`, `--disk-helper`, internal) and `--config`
//! and `--check-config` themselves are not keys.
//!
//! The file becomes arguments: `max-conns = 100` is `--max-conns=100`, `exec = true` is
//! `--exec` (`false` is no flag at all), a number or a string is the flag's value as typed,
//! an array is the flag given once per element (or its elements joined, for a flag that takes
//! a list). Those arguments are placed *before* the command line's `serve` flags and clap
//! parses them all, told that a later occurrence of a flag overrides an earlier one
//! (`args_override_self`): the command line wins, and every value, from either place, is
//! checked by the same parser as the flag's. A value that parser refuses is reported with
//! the file's line ([`check_values`]); an unknown key names its line and the nearest key.
//!
//! A boolean the file sets to `true` cannot be turned off from the command line (a flag can
//! only say yes): take it out of the file instead.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Command};

/// `serve`'s flags that are not keys, besides the hidden ones: the file cannot name itself,
/// and checking is what a command line asks for, not a setting.
const NOT_KEYS: [&str; 2] = ["config", "check_config"];

/// One key of the file: a flag of `serve`.
#[derive(Clone, Debug)]
pub struct Key {
    /// The long name, without `--`: the key as written in the file.
    pub name: String,
    /// Other names the flag answers to (visible aliases).
    pub aliases: Vec<String>,
    /// Whether the flag takes a value (else it is a switch: `true` or `false`).
    pub takes_value: bool,
    /// Whether the flag may be given several times, each adding a value.
    pub repeats: bool,
    /// The character a list value is split on, for a flag that takes one.
    pub delimiter: Option<char>,
    /// The flag's help, first line, for the sample file.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "the sample file is written by a test")
    )]
    pub help: String,
    /// The value's name in help (`DURATION`, `ADDR|off`).
    pub value_name: Option<String>,
    /// The default value, as help shows it.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "the sample file is written by a test")
    )]
    pub default: Option<String>,
}

/// The keys: every long flag of `serve` (`command`) that is neither hidden nor one of
/// [`NOT_KEYS`], in the order of its definition.
pub fn keys(command: &Command) -> Vec<Key> {
    command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !NOT_KEYS.contains(&arg.get_id().as_str()))
        .filter_map(|arg| {
            let name = arg.get_long()?.to_string();
            Some(key_of(arg, name))
        })
        .collect()
}

fn key_of(arg: &Arg, name: String) -> Key {
    let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
    Key {
        name,
        aliases: arg
            .get_visible_aliases()
            .unwrap_or_default()
            .into_iter()
            .map(str::to_string)
            .collect(),
        takes_value,
        repeats: matches!(arg.get_action(), ArgAction::Append),
        delimiter: arg.get_value_delimiter(),
        help: arg
            .get_help()
            .map(|help| help.to_string())
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        value_name: arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|name| name.to_string()),
        default: arg
            .get_default_values()
            .first()
            .map(|value| value.to_string_lossy().into_owned()),
    }
}

/// A configuration file read into arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileArgs {
    /// Each key given, with the line it is on and the arguments it became.
    pub entries: BTreeMap<String, Entry>,
    /// The file's text as read (a supervisor hands it to the workers it starts).
    pub text: String,
}

/// One key of the file, as arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The 1-based line of the key.
    pub line: usize,
    /// `--key=value` (or just `--key`, or nothing for `false`).
    pub args: Vec<OsString>,
}

impl FileArgs {
    /// All the arguments, in key order (each key is given once, so the order is immaterial).
    pub fn args(&self) -> Vec<OsString> {
        self.entries
            .values()
            .flat_map(|entry| entry.args.iter().cloned())
            .collect()
    }

    /// The line of the key a flag (long name, or one of its aliases) came from.
    fn line_of(&self, flag: &str, keys: &[Key]) -> Option<usize> {
        let key = keys
            .iter()
            .find(|key| key.name == flag || key.aliases.iter().any(|alias| alias == flag))?;
        self.entries.get(&key.name).map(|entry| entry.line)
    }
}

/// Reads `path` and turns its keys into `serve` arguments; every error (each unknown key,
/// each value of the wrong type), one line each: `PATH:LINE: what`.
///
/// The file must be a regular file of at most [`MAX_FILE`] bytes: SIGHUP reads it on the
/// loop, where a FIFO (opened without blocking here, then refused) would stop the server for
/// good and a device such as `/dev/zero` would fill its memory.
pub fn read(path: &Path, command: &Command) -> Result<FileArgs, Vec<String>> {
    let text = read_bounded(path)
        .map_err(|error| vec![format!("cannot read {}: {error}", path.display())])?;
    parse(&text, &path.display().to_string(), command)
}

/// The largest configuration file read: a file of every key with comments is ~10 KiB.
pub const MAX_FILE: u64 = 1 << 20;

/// The text of the regular file at `path`, if it is one of at most [`MAX_FILE`] bytes.
fn read_bounded(path: &Path) -> Result<String, String> {
    let bytes = monoreactor::read_reloadable(path, MAX_FILE).map_err(|error| error.to_string())?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// [`read`] on `text`; `origin` starts every error.
pub fn parse(text: &str, origin: &str, command: &Command) -> Result<FileArgs, Vec<String>> {
    type Document = BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;
    let document: Document = toml::from_str(text).map_err(|error| {
        let mut message = error.message().trim().replace('\n', " ");
        // The parser's words for an integer beyond TOML's (i64) are Rust's types.
        if message.contains("as i128") {
            message = format!(
                "{}: a number larger than TOML's integers (at most {}); a size takes a unit (\"16G\")",
                error
                    .span()
                    .and_then(|span| text[..span.start].lines().last().map(str::trim))
                    .unwrap_or("a value")
                    .trim_end_matches('=')
                    .trim(),
                i64::MAX
            );
        }
        vec![match error.span() {
            Some(span) => format!("{origin}:{}: {message}", line_of(text, span.start)),
            None => format!("{origin}: {message}"),
        }]
    })?;
    let keys = keys(command);
    let mut entries = BTreeMap::new();
    // Each setting's key as written (a flag's name or one of its aliases) and its line.
    let mut written: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut errors = Vec::new();
    // In the file's order, so the errors are too.
    let mut document: Vec<_> = document.into_iter().collect();
    document.sort_by_key(|(key, _)| key.span().start);
    for (name, value) in document {
        let line = line_of(text, name.span().start);
        let name = name.into_inner();
        let at = |what: String| format!("{origin}:{line}: {what}");
        let Some(key) = keys
            .iter()
            .find(|key| key.name == name || key.aliases.contains(&name))
        else {
            errors.push(at(unknown(&name, &keys)));
            continue;
        };
        if let Some((first, first_line)) = written.get(&key.name) {
            errors.push(at(format!(
                "\"{name}\" is the same setting as \"{first}\", given already on line {first_line}"
            )));
            continue;
        }
        written.insert(key.name.clone(), (name.clone(), line));
        match to_args(key, value.get_ref()) {
            Ok(args) => {
                entries.insert(key.name.clone(), Entry { line, args });
            }
            Err(what) => errors.push(at(format!("{name}: {what}"))),
        }
    }
    if errors.is_empty() {
        Ok(FileArgs {
            entries,
            text: text.to_string(),
        })
    } else {
        Err(errors)
    }
}

/// The arguments one key's value becomes.
fn to_args(key: &Key, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = OsString::from(format!("--{}", key.name));
    if !key.takes_value {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![flag]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            other => Err(format!("expected true or false, found {}", describe(other))),
        };
    }
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            describe(other)
        )),
    };
    // `--key=value`, one argument: a value that starts with `-` (`-1`) stays a value.
    let with_value = |value: String| {
        let mut arg = flag.clone();
        arg.push("=");
        arg.push(value);
        arg
    };
    match value {
        toml::Value::Array(items) if key.repeats => items
            .iter()
            .map(|item| scalar(item).map(with_value))
            .collect(),
        toml::Value::Array(items) => {
            let Some(delimiter) = key.delimiter else {
                return Err("expected one value, found an array".to_string());
            };
            let values = items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
            Ok(vec![with_value(values.join(&delimiter.to_string()))])
        }
        toml::Value::Boolean(_) => Err(format!(
            "expected {}, found {}",
            key.value_name.as_deref().unwrap_or("a value"),
            describe(value)
        )),
        other => Ok(vec![with_value(scalar(other)?)]),
    }
}

/// A TOML value's kind, in words.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("the string \"{text}\""),
        toml::Value::Integer(number) => format!("the number {number}"),
        toml::Value::Float(number) => format!("the number {number}"),
        toml::Value::Boolean(flag) => format!("{flag}"),
        toml::Value::Datetime(_) => "a date".to_string(),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table (keys are not grouped in sections)".to_string(),
    }
}

/// `unknown key "max-con" (did you mean max-conns?)`.
fn unknown(name: &str, keys: &[Key]) -> String {
    let nearest = keys
        .iter()
        .map(|key| (distance(name, &key.name), &key.name))
        .min()
        .filter(|(distance, key)| *distance <= 2 + key.len() / 4);
    // `max_conns` for `max-conns`: TOML habits.
    let dashed = name.replace('_', "-");
    let hint = match nearest {
        Some((_, key)) => format!(" (did you mean {key}?)"),
        None if keys.iter().any(|key| key.name == dashed) => format!(" (did you mean {dashed}?)"),
        None => String::new(),
    };
    format!("unknown key \"{name}\"{hint}")
}

/// Levenshtein distance, for the suggestion.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

/// Parses the file's arguments alone with `command` (serve's definition), so a value its flag
/// refuses is reported with the key's line: `PATH:LINE: max-conns = "x": what is wrong`.
/// Errors that are about flags together (one needs another, which the command line may
/// give) are left to the whole parse.
pub fn check_values(file: &FileArgs, origin: &str, command: &Command) -> Result<(), String> {
    let mut argv = vec![OsString::from("serve")];
    argv.extend(file.args());
    let Err(error) = command.clone().try_get_matches_from(argv) else {
        return Ok(());
    };
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue | ErrorKind::InvalidUtf8
    ) {
        return Ok(());
    }
    let flag = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(flag)) => flag.clone(),
        _ => String::new(),
    };
    let name = flag
        .trim_start_matches('-')
        .split([' ', '='])
        .next()
        .unwrap_or_default()
        .to_string();
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    let why = match std::error::Error::source(&error) {
        Some(source) => source.to_string(),
        None => first_line(&error),
    };
    Err(match file.line_of(&name, &keys(command)) {
        Some(line) => format!("{origin}:{line}: {name} = \"{value}\": {why}"),
        None => format!("{origin}: {}", first_line(&error)),
    })
}

/// clap's message, first line, without its `error: `.
pub fn first_line(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// `argv` (a whole command line, program first) with `file` spliced in right after the
/// `serve` subcommand, before serve's own flags, so those override the file. The subcommand
/// is the first argument that is not a flag: the global flags before it (`-v`, `-q`) take
/// no value.
pub fn splice(argv: &[OsString], file: &FileArgs) -> Result<Vec<OsString>, String> {
    let at = argv
        .iter()
        .skip(1)
        .position(|arg| !arg.to_string_lossy().starts_with('-'))
        .map(|index| index + 1)
        .filter(|&index| argv[index] == "serve")
        .ok_or("--config is a flag of serve")?;
    let mut spliced = argv[..=at].to_vec();
    spliced.extend(file.args());
    spliced.extend_from_slice(&argv[at + 1..]);
    Ok(spliced)
}

/// The sample file `docs/monoreactor.toml`: every key, commented out, with its help and its
/// default. A test keeps the one in the repository equal to this.
#[cfg(test)]
pub fn sample(command: &Command) -> String {
    let mut text = String::from(
        "# monoreactor serve --config monoreactor.toml\n\
         #\n\
         # Every key is a flag of `monoreactor serve` without its `--`; the command line's flags\n\
         # override the file. Switches take true or false, durations seconds (fractions allowed),\n\
         # sizes bytes; relative paths are taken from the working directory. SIGHUP re-reads\n\
         # the file: see docs/ARCHITECTURE.md for what changes live.\n\
         # This file is generated from the flags (`cargo test --bin monoreactor sample_file`\n\
         # checks it); every key is commented out, at its default.\n",
    );
    for key in keys(command) {
        text += "\n";
        let mut line = String::from("#");
        for word in key.help.split_whitespace() {
            if line.len() + 1 + word.len() > 96 {
                text += &line;
                text += "\n";
                line = String::from("#");
            }
            line.push(' ');
            line += word;
        }
        if line.len() > 1 {
            text += &line;
            text += "\n";
        }
        if !key.aliases.is_empty() {
            text += &format!("# (also: {})\n", key.aliases.join(", "));
        }
        let value = match (&key.default, key.takes_value) {
            (_, false) => "false".to_string(),
            (Some(default), true) => toml_value(default),
            (None, true) => format!(
                "\"{}\"",
                key.value_name
                    .as_deref()
                    .unwrap_or("VALUE")
                    .to_ascii_lowercase()
            ),
        };
        let unset = if key.takes_value && key.default.is_none() {
            "   # no default"
        } else {
            ""
        };
        text += &format!("# {} = {value}{unset}\n", key.name);
    }
    text
}

/// A default as it would be written in the file: numbers bare, the rest quoted.
#[cfg(test)]
fn toml_value(default: &str) -> String {
    if default.parse::<i64>().is_ok() || default.parse::<f64>().is_ok_and(f64::is_finite) {
        default.to_string()
    } else {
        format!("\"{default}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::serve::ServeArgs;
    use clap::{Args, FromArgMatches};

    fn command() -> Command {
        ServeArgs::augment_args(Command::new("serve"))
    }

    fn file(text: &str) -> Result<FileArgs, Vec<String>> {
        parse(text, "test.toml", &command())
    }

    fn args(file: &FileArgs) -> Vec<String> {
        file.args()
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn keys_become_flags_before_the_command_line() {
        let read = file(
            "max-conns = 100\nlisten = \"127.0.0.1:7000\"\nexec = true\nno-files = false\nidle-timeout = 0.5\n",
        )
        .unwrap();
        assert_eq!(
            args(&read),
            [
                "--exec",
                "--idle-timeout=0.5",
                "--listen=127.0.0.1:7000",
                "--max-conns=100"
            ]
        );
        assert_eq!(read.entries["max-conns"].line, 1);
        assert_eq!(read.entries["idle-timeout"].line, 5);
    }

    #[test]
    fn an_unknown_key_names_itself_its_line_and_the_nearest_key() {
        let errors =
            file("listen = \"127.0.0.1:0\"\n\nmax-con = 5\nmax_put = 1\nzzz = 1\n").unwrap_err();
        assert_eq!(
            errors,
            [
                "test.toml:3: unknown key \"max-con\" (did you mean max-conns?)",
                "test.toml:4: unknown key \"max_put\" (did you mean max-put?)",
                "test.toml:5: unknown key \"zzz\"",
            ]
        );
    }

    #[test]
    fn hidden_flags_and_config_itself_are_not_keys() {
        for key in ["worker-of", "disk-helper", "config", "check-config"] {
            let errors = file(&format!("{key} = \"x\"\n")).unwrap_err();
            assert!(errors[0].contains("unknown key"), "{key}: {errors:?}");
        }
    }

    /// A flag's name and its alias are one setting: the error names both as written, and the
    /// line of the first (it said "max-commands-per-conn is the same setting as
    /// max-commands-per-conn", whichever came first).
    #[test]
    fn a_setting_given_under_its_name_and_its_alias_names_both() {
        let errors = file("max-streams-per-conn = 3\nmax-commands-per-conn = 4\n").unwrap_err();
        assert_eq!(
            errors,
            [
                "test.toml:2: \"max-commands-per-conn\" is the same setting as \"max-streams-per-conn\", given already on line 1"
            ]
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_says_so_with_its_line() {
        let errors = file("exec = \"yes\"\nmax-conns = true\nlisten = { port = 1 }\n").unwrap_err();
        assert_eq!(
            errors,
            [
                "test.toml:1: exec: expected true or false, found the string \"yes\"",
                "test.toml:2: max-conns: expected N, found true",
                "test.toml:3: listen: expected a string or a number, found a table (keys are not grouped in sections)",
            ]
        );
    }

    #[test]
    fn a_value_the_flag_refuses_names_key_line_and_why() {
        let command = command();
        let read = parse(
            "listen = \"127.0.0.1:0\"\nmax-conns = \"many\"\n",
            "test.toml",
            &command,
        )
        .unwrap();
        let error = check_values(&read, "test.toml", &command).unwrap_err();
        assert!(
            error.starts_with("test.toml:2: max-conns = \"many\": "),
            "{error}"
        );
        assert!(error.contains("is not a whole number"), "{error}");
        let read = parse("hello-timeout = -1\n", "test.toml", &command).unwrap();
        let error = check_values(&read, "test.toml", &command).unwrap_err();
        assert!(
            error.starts_with("test.toml:1: hello-timeout = \"-1\": "),
            "{error}"
        );
        let good = parse("max-conns = 5\n", "test.toml", &command).unwrap();
        assert_eq!(check_values(&good, "test.toml", &command), Ok(()));
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let errors = file("max-conns = 5\nlisten = \n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("test.toml:2: "), "{errors:?}");
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let read = file("max-conns = 100\nmax-put = 7\nexec = true\n").unwrap();
        let argv: Vec<OsString> = ["monoreactor", "-v", "serve", "--max-conns", "5"]
            .into_iter()
            .map(OsString::from)
            .collect();
        let spliced = splice(&argv, &read).unwrap();
        assert_eq!(
            spliced,
            [
                "monoreactor",
                "-v",
                "serve",
                "--exec",
                "--max-conns=100",
                "--max-put=7",
                "--max-conns",
                "5"
            ]
        );
        let matches = command()
            .try_get_matches_from(&spliced[2..])
            .expect("parses");
        let serve = ServeArgs::from_arg_matches(&matches).unwrap();
        assert_eq!(serve.max_conns(), 5, "the command line wins");
        assert_eq!(
            serve.max_put(),
            7,
            "the file counts where the command line is silent"
        );
        assert!(splice(&argv[..2], &read).is_err());
    }

    /// Every key `serve` has — today's and whatever flag is added later — is accepted, with a
    /// value its own parser takes (its default, or one made for the value's kind).
    #[test]
    fn every_flag_of_serve_is_a_key() {
        let command = command();
        let keys = keys(&command);
        assert!(keys.len() >= 25, "{} keys", keys.len());
        let mut text = String::new();
        for key in &keys {
            let value = match (&key.default, key.takes_value) {
                (_, false) => "true".to_string(),
                (Some(default), true) => toml_value(default),
                (None, true) => "\"1\"".to_string(),
            };
            text += &format!("{} = {value}\n", key.name);
        }
        let read = parse(&text, "all.toml", &command).unwrap();
        assert_eq!(read.entries.len(), keys.len());
        // Every value went through its flag's parser; the keys without a default got "1",
        // which only a path or a count takes, so those are checked as names only.
        let defaults_only: String = keys
            .iter()
            .filter(|key| key.default.is_some() && key.takes_value)
            .map(|key| {
                format!(
                    "{} = {}\n",
                    key.name,
                    toml_value(key.default.as_ref().unwrap())
                )
            })
            .collect();
        let read = parse(&defaults_only, "defaults.toml", &command).unwrap();
        assert_eq!(check_values(&read, "defaults.toml", &command), Ok(()));
        for flag in command.get_arguments().filter(|arg| arg.is_hide_set()) {
            let long = flag.get_long().unwrap_or_default();
            assert!(
                !keys.iter().any(|key| key.name == long),
                "{long} is hidden: not a key"
            );
        }
    }

    #[test]
    fn sample_file_lists_every_key_and_matches_the_repository() {
        let command = command();
        let sample = sample(&command);
        for key in keys(&command) {
            assert!(
                sample.contains(&format!("\n# {} = ", key.name)),
                "{} missing",
                key.name
            );
        }
        // Uncommented, the sample is a file the server accepts.
        let uncommented: String = sample
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| line.contains(" = ") && !line.contains("no default"))
            .map(|line| format!("{line}\n"))
            .collect();
        let read = parse(&uncommented, "sample", &command).unwrap();
        assert_eq!(check_values(&read, "sample", &command), Ok(()));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/monoreactor.toml");
        if std::env::var_os("MONOREACTOR_WRITE_SAMPLE").is_some() {
            std::fs::write(path, &sample).unwrap();
        }
        let in_repository = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            in_repository == sample,
            "docs/monoreactor.toml is not what the flags say: run MONOREACTOR_WRITE_SAMPLE=1 cargo test --bin monoreactor sample_file"
        );
    }

    /// The README's example file is one the server accepts.
    #[test]
    fn the_readme_example_is_a_valid_file() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("```toml\n# /etc/monoreactor.toml")
            .expect("the README's example")
            + "```toml\n".len();
        let example = &readme[start..];
        let example = &example[..example.find("```").expect("its end")];
        let command = command();
        let read = parse(example, "README.md", &command).unwrap();
        assert!(read.entries.len() >= 10);
        assert_eq!(check_values(&read, "README.md", &command), Ok(()));
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("max-con", "max-conns"), 2);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("listen", "listen"), 0);
    }
}
