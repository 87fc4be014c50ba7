//! `monoreactor access`: the access file's credentials. `add` makes a token, prints it once and
//! appends its entry (the token's hash only) to the file; `hash` prints a token's hash, and
//! `key` a client certificate's key, for an entry written by hand.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use monoreactor::{Access, FilesRight, NewEntry, generate_token, token_hash};

use crate::args::byte_size;
use crate::failure::{Failure, print_stdout};

/// The flags of `access`.
#[derive(Args)]
pub struct AccessArgs {
    #[command(subcommand)]
    command: AccessCommand,
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Make a new random token, print it once on stdout, and append a credential with its
    /// BLAKE3 to the access file (created mode 600 if missing). The file is checked whole
    /// with the new entry before anything is written.
    Add(AddArgs),
    /// Read a token on stdin (one trailing newline dropped) and print how an access file
    /// stores it: blake3:<64 hex>.
    Hash,
    /// Print the key of a client certificate (PEM, the first in the file) as an access file's
    /// `key` entry names it: the SHA-256 of its SubjectPublicKeyInfo, 64 hex digits. (Not
    /// `openssl x509 -fingerprint`, which hashes the whole certificate: a renewed certificate
    /// with the same key keeps its credential.)
    Key {
        /// The client certificate, PEM.
        #[arg(value_name = "CERT.pem")]
        cert: PathBuf,
    },
}

/// What a file credential may do with files.
#[derive(Clone, Copy, ValueEnum)]
enum Files {
    None,
    Read,
    Write,
}

#[derive(Args)]
struct AddArgs {
    /// The access file (serve --access PATH).
    #[arg(long, value_name = "PATH")]
    file: PathBuf,
    /// The credential's name, in the server's logs and its refusals.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// The only directory it sees, beneath the server's root [default: the whole root].
    #[arg(long, value_name = "DIR")]
    root: Option<String>,
    /// What it may do with files.
    #[arg(long, value_enum, default_value = "none")]
    files: Files,
    /// It may run any command.
    #[arg(long, conflicts_with = "allow")]
    exec: bool,
    /// It may run commands whose argv starts with these words (split at spaces: "git status"
    /// allows argv ["git", "status", ...]); repeat for more.
    #[arg(long, value_name = "WORDS")]
    allow: Vec<String>,
    /// Commands it may run at once, across its connections.
    #[arg(long, value_name = "N", value_parser = |text: &str| crate::args::count_in(text, 1, usize::MAX).map(|count| count as u64))]
    max_commands: Option<u64>,
    /// Bytes it may store (64M, 16G, 1T: K, M, G, T are powers of 1024; KB, MB... of 1000).
    #[arg(long, value_name = "SIZE", value_parser = byte_size)]
    quota: Option<u64>,
}

/// Runs `access add` or `access hash`.
pub fn run(args: AccessArgs) -> Result<(), Failure> {
    match args.command {
        AccessCommand::Add(add) => self::add(add),
        AccessCommand::Hash => hash(),
        AccessCommand::Key { cert } => key(&cert),
    }
}

fn add(args: AddArgs) -> Result<(), Failure> {
    let token = generate_token().map_err(Failure::own)?;
    let entry = NewEntry {
        name: args.name,
        token_hash: token_hash(token.as_bytes()),
        root: args.root,
        files: match args.files {
            Files::None => FilesRight::None,
            Files::Read => FilesRight::Read,
            Files::Write => FilesRight::Write,
        },
        exec_any: args.exec,
        allow: args
            .allow
            .iter()
            .map(|words| words.split_whitespace().map(str::to_string).collect())
            .collect(),
        max_commands: args.max_commands,
        quota: args.quota,
    };
    let path = &args.file;
    let existing = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(Failure::own(format!("{}: {error}", path.display()))),
    };
    let addition = entry.to_toml();
    // The new entry alone first: what is wrong with the flags (`--name ""`) is said of them,
    // not as a line of a file that may not exist yet.
    Access::parse(&addition, "").map_err(|error| {
        let what = error.splitn(3, ':').nth(2).unwrap_or(&error).trim();
        Failure::usage(format!("access add: {what}"))
    })?;
    // The whole file as it will be: a duplicate name, a file that was already broken are
    // refused before a byte is written.
    Access::parse(
        &format!("{existing}{addition}"),
        &path.display().to_string(),
    )
    .map_err(Failure::usage)?;
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| Failure::own(format!("{}: {error}", path.display())))?;
    file.write_all(addition.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| Failure::own(format!("{}: {error}", path.display())))?;
    // Printed once, never stored: the file holds its hash only.
    print_stdout(&format!("{token}\n"))
}

fn hash() -> Result<(), Failure> {
    let mut token = Vec::new();
    std::io::stdin()
        .read_to_end(&mut token)
        .map_err(|error| Failure::own(format!("stdin: {error}")))?;
    if token.last() == Some(&b'\n') {
        token.pop();
        if token.last() == Some(&b'\r') {
            token.pop();
        }
    }
    if token.is_empty() {
        return Err(Failure::usage("no token on stdin".to_string()));
    }
    // A token no client would send (too short, a line break inside) makes a credential that
    // can never be used: refused here with the clients' own words.
    let token = monoreactor::Token::new(token)
        .map_err(|why| Failure::usage(format!("no client would send this token: {why}")))?;
    print_stdout(&format!("{}\n", token_hash(token.as_bytes())))
}

fn key(cert: &std::path::Path) -> Result<(), Failure> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(cert).map_err(|error| {
        Failure::own(format!(
            "{}: no PEM certificate (BEGIN CERTIFICATE) found: {error}",
            cert.display()
        ))
    })?;
    let key = monoreactor::key_fingerprint(&der)
        .map_err(|error| Failure::own(format!("{}: {error}", cert.display())))?;
    print_stdout(&format!("{key}\n"))
}
