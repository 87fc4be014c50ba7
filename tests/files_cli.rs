//! The file commands (`get`, `put`, `ls`, `stat`, `rm`, `mkdir`) against a real server over
//! loopback: round trips checked with BLAKE3 (and `b3sum` when installed), downloads to
//! stdout, listings, refusals and their exit statuses, resumed transfers in both directions,
//! and the token.

mod support;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use monoreactor::proto::files::{FileInfo, FileKind, PutFlags};
use monoreactor::proto::{Flags, Frame, FrameType, HEADER_LEN, Header, HelloOk, SessionFlags};
use support::exec::{Scratch, TEST_TOKEN};
use support::files::*;
use support::*;

/// A client's working directory beside a [`FileServer`], and the server's address.
struct Cli {
    addr: String,
    work: Scratch,
}

impl Cli {
    fn new(server: &Server) -> Cli {
        Cli {
            addr: server.framed_str(),
            work: Scratch::new("files-cli"),
        }
    }

    /// `monoreactor COMMAND --addr ADDR ARGS...` in the working directory.
    #[track_caller]
    fn run(&self, command: &str, args: &[&str]) -> CliOutput {
        self.run_with(command, args, None)
    }

    #[track_caller]
    fn run_with(&self, command: &str, args: &[&str], stdin: Option<Vec<u8>>) -> CliOutput {
        let mut all = vec![command, "--addr", &self.addr];
        all.extend_from_slice(args);
        cli(&all, self.work.path(), stdin)
    }

    /// Like [`Cli::run`], failing the test unless the command succeeds.
    #[track_caller]
    fn ok(&self, command: &str, args: &[&str]) -> CliOutput {
        let output = self.run(command, args);
        assert_eq!(
            output.code(),
            0,
            "monoreactor {command} {args:?} failed: {}",
            output.stderr
        );
        output
    }

    /// A path in the working directory.
    fn local(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

/// No download part files left in `dir`.
#[track_caller]
fn assert_no_part_files(dir: &Path) {
    let parts: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".monoreactor-part"))
        .collect();
    assert!(parts.is_empty(), "part files left: {parts:?}");
}

#[test]
fn cli_round_trips_keep_every_byte_and_get_writes_stdout() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    for (seed, size) in [0usize, 1, 65_535, 65_536, 1_048_577, 100 * MIB]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(seed as u64 + 300, size);
        let expected = hex(&blake3_of(&data));
        let name = format!("in-{size}");
        fs::write(cli.local(&name), &data).unwrap();
        let remote = format!("stored-{size}");
        let put = cli.ok("put", &[&name, &remote]);
        assert!(put.stdout.is_empty(), "put printed {:?}", put.text());
        assert!(
            fs::read(server.at(&remote)).unwrap() == data,
            "{size} bytes: the stored file differs"
        );

        let out = format!("out-{size}");
        cli.ok("get", &[&remote, &out]);
        let got = fs::read(cli.local(&out)).unwrap();
        assert!(got == data, "{size} bytes: the downloaded file differs");
        assert_eq!(hex(&blake3_file(&cli.local(&out))), expected);
        if let Some(sum) = b3sum(&cli.local(&out)) {
            assert_eq!(sum, expected, "{size} bytes: b3sum of the download");
        }
        if let Some(sum) = b3sum(&server.at(&remote)) {
            assert_eq!(sum, expected, "{size} bytes: b3sum of the stored file");
        }

        let stdout = cli.ok("get", &[&remote, "-"]);
        assert_eq!(stdout.stdout.len(), size, "{size} bytes to stdout");
        assert!(stdout.stdout == data, "{size} bytes: stdout differs");
        assert_eq!(hex(&blake3_of(&stdout.stdout)), expected);
        fs::remove_file(cli.local(&out)).unwrap();
        fs::remove_file(cli.local(&name)).unwrap();
    }
    assert_no_part_files(cli.work.path());
    assert!(leftovers_after_the_disk(server.root()).is_empty());

    // get without LOCAL writes the remote's name in the working directory; into a directory,
    // that name inside it.
    fs::create_dir(server.at("sub")).unwrap();
    fs::write(server.at("sub/named.txt"), b"named").unwrap();
    cli.ok("get", &["sub/named.txt"]);
    assert_eq!(fs::read(cli.local("named.txt")).unwrap(), b"named");
    fs::create_dir(cli.local("into")).unwrap();
    cli.ok("get", &["sub/named.txt", "into"]);
    assert_eq!(fs::read(cli.local("into/named.txt")).unwrap(), b"named");
}

#[test]
fn cli_put_reads_stdin_and_stores_into_a_directory() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    let data = random_bytes(7, 300_001);
    let put = cli.run_with("put", &["-", "from-stdin"], Some(data.clone()));
    assert_eq!(put.code(), 0, "{}", put.stderr);
    assert!(fs::read(server.at("from-stdin")).unwrap() == data);

    cli.ok("mkdir", &["dir"]);
    fs::write(cli.local("local.bin"), b"into the dir").unwrap();
    cli.ok("put", &["local.bin", "dir/"]);
    assert_eq!(
        fs::read(server.at("dir/local.bin")).unwrap(),
        b"into the dir"
    );
    // An existing directory named without the slash works like cp.
    fs::write(cli.local("other.bin"), b"cp-like").unwrap();
    cli.ok("put", &["other.bin", "dir"]);
    assert_eq!(fs::read(server.at("dir/other.bin")).unwrap(), b"cp-like");
    assert!(leftovers_after_the_disk(server.root()).is_empty());
}

#[test]
fn cli_ls_stat_mkdir_and_rm() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    cli.ok("mkdir", &["d", "d/sub"]);
    assert!(server.at("d/sub").is_dir());
    fs::write(cli.local("ten"), b"0123456789").unwrap();
    cli.ok("put", &["ten", "d/ten"]);
    symlink("/etc", server.at("d/link")).unwrap();
    fs::write(server.at("d/.monoreactor-partial-0000000000000001"), b"x").unwrap();
    fs::write(server.at("d/.monoreactor-tmp-1-1"), b"x").unwrap();

    let ls = cli.ok("ls", &["d"]).text();
    let lines: Vec<Vec<&str>> = ls
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let summary: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|words| (words[0], words[1], *words.last().unwrap()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("u", "1", ".monoreactor-partial-0000000000000001"),
            ("l", "4", "link"),
            ("d", summary[2].1, "sub"),
            ("-", "10", "ten")
        ],
        "ls d: the partial upload shown, the server's other names not:\n{ls}"
    );
    // The interrupted upload can be removed by its name.
    cli.ok("rm", &["d/.monoreactor-partial-0000000000000001"]);
    let ls = cli.ok("ls", &["d"]).text();
    assert!(!ls.contains(".monoreactor-"), "{ls}");

    let json = cli.ok("ls", &["--json", "d"]).text();
    assert!(
        json.contains(r#"{"name":"ten","kind":"file","size":10,"#),
        "ls --json:\n{json}"
    );
    assert!(
        json.contains(r#""name":"sub","kind":"directory""#),
        "{json}"
    );
    assert!(json.contains(r#""name":"link","kind":"symlink""#), "{json}");
    assert!(!json.contains(".monoreactor-"), "{json}");
    let root = cli.ok("ls", &[]).text();
    assert_eq!(root.lines().count(), 1, "ls of the root:\n{root}");
    assert!(root.trim_end().ends_with(" d"), "{root}");

    let stat = cli.ok("stat", &["d/ten"]).text();
    assert!(stat.contains("kind:   file"), "{stat}");
    assert!(stat.contains("size:   10"), "{stat}");
    let stat = cli.ok("stat", &["--json", "d/link"]).text();
    assert!(stat.contains(r#""kind":"symlink""#), "{stat}");
    let stat = cli.ok("stat", &["."]).text();
    assert!(stat.contains("kind:   directory"), "{stat}");

    // Refusals: exit status 1 and a line naming the problem.
    let again = cli.run("mkdir", &["d"]);
    assert_eq!(again.code(), 1, "mkdir of an existing dir");
    assert!(again.stderr.contains("ALREADY_EXISTS"), "{}", again.stderr);
    let full = cli.run("rm", &["d"]);
    assert_eq!(full.code(), 1, "rm of a non-empty dir");
    assert!(full.stderr.contains("NOT_EMPTY"), "{}", full.stderr);
    assert!(server.at("d/ten").exists());
    let missing = cli.run("stat", &["nope"]);
    assert_eq!(missing.code(), 1);
    assert!(missing.stderr.contains("NOT_FOUND"), "{}", missing.stderr);

    // rm goes on after a refusal and removes the rest.
    let mixed = cli.run("rm", &["d/nope", "d/ten", "d/sub", "d/link"]);
    assert_eq!(mixed.code(), 1, "one of the paths was refused");
    assert!(!server.at("d/ten").exists());
    assert!(!server.at("d/sub").exists());
    assert!(fs::symlink_metadata(server.at("d/link")).is_err());
    assert!(
        fs::metadata("/etc/passwd").is_ok(),
        "the link's target stays"
    );
    // A directory holding only an interrupted upload (and a commit's leftover link) is
    // removed with them.
    fs::write(server.at("d/.monoreactor-partial-0000000000000002"), b"x").unwrap();
    cli.ok("rm", &["d"]);
    assert!(!server.at("d").exists());
}

#[test]
fn cli_refuses_escapes_and_writes_nothing() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    symlink("/etc", server.at("etc")).unwrap();
    symlink(server.outside(), server.at("out")).unwrap();
    fs::write(cli.local("payload"), b"must not land anywhere").unwrap();
    let unique = format!("mr-cli-escape-{}", std::process::id());

    // Refused before connecting: usage errors (2).
    for remote in [
        format!("../{unique}"),
        format!("/tmp/{unique}"),
        format!("a/../../{unique}"),
        format!(".monoreactor-partial-{unique}"),
    ] {
        let put = cli.run("put", &["payload", &remote]);
        assert_eq!(put.code(), 2, "put to {remote:?}: {}", put.stderr);
        let get = cli.run("get", &[&remote, "fetched"]);
        assert_eq!(get.code(), 2, "get {remote:?}: {}", get.stderr);
    }
    let get = cli.run("get", &["/etc/passwd", "fetched"]);
    assert_eq!(get.code(), 2, "get /etc/passwd: {}", get.stderr);

    // Refused by the server: through symlinks (1).
    for remote in ["etc/passwd", "out/secret", "etc"] {
        let get = cli.run("get", &[remote, "fetched"]);
        assert_eq!(get.code(), 1, "get {remote}: {}", get.stderr);
        assert!(get.stderr.contains("OUTSIDE_ROOT"), "{}", get.stderr);
        let stdout = cli.run("get", &[remote, "-"]);
        assert_eq!(stdout.code(), 1, "get {remote} -: {}", stdout.stderr);
        assert!(stdout.stdout.is_empty(), "get {remote} - printed bytes");
    }
    for remote in [
        format!("out/{unique}"),
        "etc".to_string(),
        "out".to_string(),
    ] {
        let put = cli.run("put", &["payload", &remote]);
        assert_eq!(put.code(), 1, "put to {remote}: {}", put.stderr);
        assert!(put.stderr.contains("OUTSIDE_ROOT"), "{}", put.stderr);
    }
    let mkdir = cli.run("mkdir", &[&format!("out/{unique}")]);
    assert_eq!(mkdir.code(), 1, "{}", mkdir.stderr);
    assert!(!cli.local("fetched").exists(), "a refused get wrote a file");
    assert_no_part_files(cli.work.path());
    assert!(
        fs::symlink_metadata(server.at("etc"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(server.at("out"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    server.assert_nothing_outside("after the CLI escapes");
    assert!(fs::symlink_metadata(format!("/tmp/{unique}")).is_err());
}

#[test]
fn cli_put_continue_waits_while_another_server_process_receives_the_upload() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    let data = random_bytes(56, 2 * MIB + 9);
    fs::write(cli.local("big.bin"), &data).unwrap();
    let elsewhere = hold_upload_elsewhere(server.root(), "big.bin", &data, MIB);
    let (done, finished) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| done.send(cli.run("put", &["--continue", "big.bin", "big.bin"])));
        // Still waiting a while later: the upload is busy, not failed.
        assert!(finished.recv_timeout(Duration::from_millis(700)).is_err());
        drop(elsewhere);
        let put = finished
            .recv_timeout(Duration::from_secs(30))
            .expect("put ends");
        assert_eq!(put.code(), 0, "{}", put.stderr);
        assert!(put.stderr.contains("waiting"), "{}", put.stderr);
    });
    assert!(fs::read(server.at("big.bin")).unwrap() == data);
}

#[test]
fn cli_get_continue_resumes_a_part_file_and_drops_a_wrong_one() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    let data = random_bytes(55, 3 * MIB + 17);
    fs::write(server.at("f"), &data).unwrap();
    let part = cli.local(".out.monoreactor-part");

    // A part holding the first bytes: only the rest is fetched.
    fs::write(&part, &data[..MIB + 5]).unwrap();
    cli.ok("get", &["--continue", "f", "out"]);
    assert!(
        fs::read(cli.local("out")).unwrap() == data,
        "resumed download differs"
    );
    assert!(!part.exists(), "the part file stays after the rename");

    // A part with wrong bytes: the whole-file hash catches it, nothing is written, the part
    // goes.
    fs::remove_file(cli.local("out")).unwrap();
    let mut wrong = data[..MIB].to_vec();
    wrong[100] ^= 1;
    fs::write(&part, &wrong).unwrap();
    let failed = cli.run("get", &["--continue", "f", "out"]);
    assert_eq!(
        failed.code(),
        255,
        "a failed verification: {}",
        failed.stderr
    );
    assert!(
        !cli.local("out").exists(),
        "an unverified download was written"
    );
    assert!(!part.exists(), "the wrong part was kept");

    // Without --continue a stale part is simply overwritten.
    fs::write(&part, &wrong).unwrap();
    cli.ok("get", &["f", "out"]);
    assert!(fs::read(cli.local("out")).unwrap() == data);
    assert_no_part_files(cli.work.path());
}

#[test]
fn cli_put_continue_sends_only_what_the_server_lacks() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    let data = random_bytes(66, 4 * MIB + 3);
    let hash = blake3_of(&data);
    fs::write(cli.local("big"), &data).unwrap();
    fs::write(server.at("big"), b"old").unwrap();

    // An upload cut after 2 MiB, in raw frames.
    let sent = 2 * MIB;
    {
        let mut conn = server.conn();
        let stream = conn.new_stream();
        ok(
            conn.begin_put(
                stream,
                b"big",
                data.len() as u64,
                PutFlags::NONE,
                Some(hash),
            ),
            "begin the put",
        );
        conn.send_data(stream, &data[..sent]);
        conn.echo(b"sync");
    }
    assert_eq!(fs::read(server.at("big")).unwrap(), b"old");
    // `ls` shows the interrupted upload, so that it can be seen and removed.
    let ls = cli.ok("ls", &[]).text();
    assert!(
        ls.lines()
            .any(|line| line.starts_with("u ") && line.contains(".monoreactor-partial-")),
        "ls does not show the partial:\n{ls}"
    );

    // The server learns of the cut asynchronously: until then the upload is "in progress".
    let resumed = retry(std::time::Duration::from_secs(5), || {
        let output = cli_verbose(&cli, &["put", "--continue", "big", "big"]);
        (output.code() == 0 || !output.stderr.contains("already in progress")).then_some(output)
    })
    .expect("the upload stayed in progress after its connection closed");
    assert_eq!(resumed.code(), 0, "put --continue: {}", resumed.stderr);
    assert!(
        fs::read(server.at("big")).unwrap() == data,
        "resumed upload differs"
    );
    let held = resumed
        .stderr
        .split(" were already there")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|number| number.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no 'N were already there' in:\n{}", resumed.stderr));
    assert!(
        held > 0 && held <= sent as u64,
        "the resume sent from {held}, after {sent} bytes had been sent"
    );
    assert!(leftovers_after_the_disk(server.root()).is_empty());
}

/// `monoreactor -v ARGS` (debug logging: the client says how much the server already held).
fn cli_verbose(cli: &Cli, args: &[&str]) -> CliOutput {
    let mut all = vec!["-v", args[0], "--addr", &cli.addr];
    all.extend_from_slice(&args[1..]);
    support::files::cli(&all, cli.work.path(), None)
}

#[test]
fn cli_file_commands_need_the_token() {
    let server = Server::start_exec(&[]);
    let cli = Cli::new(&server);
    fs::write(server.root().join("f"), b"for token holders").unwrap();
    let refused = cli.run("get", &["f", "-"]);
    assert_eq!(refused.code(), 1, "get without a token: {}", refused.stderr);
    assert!(
        refused.stderr.contains("UNAUTHENTICATED"),
        "{}",
        refused.stderr
    );
    assert!(refused.stdout.is_empty());
    let ls = cli.run("ls", &[]);
    assert_eq!(ls.code(), 1, "ls without a token: {}", ls.stderr);

    let token = server.scratch().join("token");
    let token = token.to_str().unwrap();
    let got = cli.ok("get", &["--token-file", token, "f", "-"]);
    assert_eq!(got.stdout, b"for token holders");
    let with_env = std::process::Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .args(["stat", "--addr", &cli.addr, "f"])
        .env(
            "MONOREACTOR_TOKEN",
            std::str::from_utf8(TEST_TOKEN).unwrap(),
        )
        .output()
        .expect("run stat");
    assert!(
        with_env.status.success(),
        "stat with $MONOREACTOR_TOKEN: {}",
        String::from_utf8_lossy(&with_env.stderr)
    );
}

/// Stderr is exactly one `monoreactor: ...` line; returns it.
#[track_caller]
fn one_line(output: &CliOutput) -> &str {
    let lines: Vec<&str> = output.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("monoreactor: "),
        "expected one `monoreactor: ...` line on stderr, got {:?}",
        output.stderr
    );
    lines[0]
}

/// Creates a FIFO at `path`.
fn mkfifo(path: &Path) {
    let name = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a temp path");
    // SAFETY: mkfifo(3) only reads the NUL-terminated name, which outlives the call.
    let rc = unsafe { libc::mkfifo(name.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

#[test]
fn cli_get_writes_through_what_is_not_a_regular_file_and_follows_symlinks() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    let data = random_bytes(77, 300_001);
    fs::write(server.at("f"), &data).unwrap();

    // A FIFO with a reader: the verified bytes go through it, and it stays a FIFO.
    let fifo = cli.local("fifo");
    mkfifo(&fifo);
    let (sender, received) = mpsc::channel();
    let reading = fifo.clone();
    // Not joined: were the FIFO replaced, this reader would wait for a writer forever.
    std::thread::spawn(move || sender.send(fs::read(reading)));
    let got = cli.run("get", &["f", "fifo"]);
    let kind = fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced by {kind:?}");
    assert_eq!(got.code(), 0, "get into a FIFO: {}", got.stderr);
    let read = received
        .recv_timeout(Duration::from_secs(10))
        .expect("the FIFO's reader got an end of file")
        .expect("read the FIFO");
    assert!(read == data, "the FIFO's reader got other bytes");
    // --continue has nothing to resume in a FIFO: refused before it is opened (no reader
    // now: opening it would wait).
    let resumed = cli.run("get", &["--continue", "f", "fifo"]);
    assert_eq!(
        resumed.code(),
        2,
        "--continue into a FIFO: {}",
        resumed.stderr
    );
    assert!(one_line(&resumed).contains("fifo"), "{}", resumed.stderr);
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    // A symlink to a device is followed and written through; the link and the device stay.
    let null_inode = fs::symlink_metadata("/dev/null").unwrap().ino();
    symlink("/dev/null", cli.local("null-link")).unwrap();
    cli.ok("get", &["f", "null-link"]);
    assert_eq!(
        fs::read_link(cli.local("null-link")).unwrap(),
        Path::new("/dev/null")
    );
    assert!(
        fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // The device itself (safe now that writing through is shown to work).
    cli.ok("get", &["f", "/dev/null"]);
    assert!(
        fs::symlink_metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device(),
        "/dev/null is no longer a device"
    );
    assert_eq!(
        fs::symlink_metadata("/dev/null").unwrap().ino(),
        null_inode,
        "/dev/null was replaced"
    );

    // A symlink to a regular file is followed: the target is replaced atomically (its part
    // file beside it), the link stays a link.
    fs::create_dir(cli.local("real")).unwrap();
    fs::write(cli.local("real/target"), b"old").unwrap();
    symlink("real/target", cli.local("link")).unwrap();
    cli.ok("get", &["f", "link"]);
    assert_eq!(
        fs::read_link(cli.local("link")).unwrap(),
        Path::new("real/target")
    );
    assert!(fs::read(cli.local("real/target")).unwrap() == data);
    assert_no_part_files(cli.work.path());
    assert_no_part_files(&cli.local("real"));

    // A dangling symlink is refused (as cp does): nothing is created where it points.
    symlink("missing-target", cli.local("dangling")).unwrap();
    let refused = cli.run("get", &["f", "dangling"]);
    assert_eq!(refused.code(), 255, "{}", refused.stderr);
    assert!(
        one_line(&refused).contains("dangling"),
        "{}",
        refused.stderr
    );
    assert!(
        fs::symlink_metadata(cli.local("dangling"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!cli.local("missing-target").exists());
    assert_no_part_files(cli.work.path());
}

#[test]
fn cli_get_checks_the_destination_before_asking_for_a_byte() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    let data = random_bytes(88, 3 * MIB);
    fs::write(server.at("big"), &data).unwrap();

    // A missing directory: one line, no part file anywhere, no --continue that cannot work.
    for dest in ["nodir/", "nodir/file"] {
        let failed = cli.run("get", &["big", dest]);
        assert_eq!(failed.code(), 255, "get big {dest}: {}", failed.stderr);
        let line = one_line(&failed);
        assert!(line.contains("nodir"), "{line}");
        assert!(
            !line.contains("--continue"),
            "a hint that cannot work: {line}"
        );
        assert_no_part_files(cli.work.path());
        assert!(!cli.local("nodir").exists());
    }

    // A file named as a directory is refused and left alone.
    fs::write(cli.local("plain"), b"keep me").unwrap();
    let failed = cli.run("get", &["big", "plain/"]);
    assert_eq!(failed.code(), 255, "get big plain/: {}", failed.stderr);
    assert!(one_line(&failed).contains("plain"), "{}", failed.stderr);
    assert_eq!(fs::read(cli.local("plain")).unwrap(), b"keep me");
    assert_no_part_files(cli.work.path());

    // An existing directory receives the remote's name, with or without the slash (as cp)...
    fs::create_dir(cli.local("into")).unwrap();
    cli.ok("get", &["big", "into/"]);
    assert!(fs::read(cli.local("into/big")).unwrap() == data);
    // ...unless that name is a directory too.
    fs::create_dir_all(cli.local("full/big")).unwrap();
    let failed = cli.run("get", &["big", "full"]);
    assert_eq!(failed.code(), 255, "get big full: {}", failed.stderr);
    assert!(one_line(&failed).contains("directory"), "{}", failed.stderr);
    assert!(cli.local("full/big").is_dir());
    assert_no_part_files(&cli.local("full"));
    assert_no_part_files(&cli.local("full/big"));
}

/// `monoreactor COMMAND --addr ADDR ARGS...` with `/dev/full` as stdout: its exit code and
/// stderr.
#[track_caller]
fn run_into_full(cli: &Cli, command: &str, args: &[&str]) -> CliOutput {
    let full = fs::File::options()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let mut child = Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .args([command, "--addr", &cli.addr])
        .args(args)
        .current_dir(cli.work.path())
        .env_remove("MONOREACTOR_TOKEN")
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn monoreactor");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let Some(status) = wait_child(&mut child, CLI_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("monoreactor {command} {args:?} >/dev/full did not exit");
    };
    CliOutput {
        status,
        stdout: Vec::new(),
        stderr: collector.join().expect("stderr collector"),
    }
}

#[test]
fn cli_a_full_stdout_is_one_line_and_255() {
    let server = FileServer::start(&[]);
    let cli = Cli::new(&server);
    fs::write(server.at("small"), b"a few bytes").unwrap();
    fs::write(server.at("large"), random_bytes(99, 2 * MIB)).unwrap();
    for args in [
        &["get", "small", "-"][..],
        &["get", "large", "-"],
        &["ls"],
        &["ls", "--json"],
        &["stat", "small"],
    ] {
        let output = run_into_full(&cli, args[0], &args[1..]);
        assert_eq!(output.code(), 255, "{args:?} >/dev/full: {}", output.stderr);
        assert!(
            one_line(&output).contains("No space left on device"),
            "{args:?}: {}",
            output.stderr
        );
    }
}

/// Reads one frame from `stream`: its header (the payload is read and dropped).
fn read_frame(stream: &mut TcpStream) -> Header {
    let mut head = [0; HEADER_LEN];
    stream.read_exact(&mut head).expect("a frame header");
    let header = Header::parse(&head, u32::MAX)
        .expect("a valid header")
        .expect("a whole header");
    let mut payload = vec![0; header.len as usize];
    stream.read_exact(&mut payload).expect("a frame payload");
    header
}

/// A file server, on a free loopback port, that answers one GET with `data` and a DIGEST
/// that does not match it: the bytes were corrupted on the way, as far as a client can tell.
fn lying_file_server(data: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let serving = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        read_frame(&mut stream); // HELLO
        let mut out = Vec::new();
        HelloOk {
            version: 2,
            max_payload_len: 1 << 20,
            flags: SessionFlags::FILES,
        }
        .encode(&mut out);
        stream.write_all(&out).expect("HELLO_OK");
        let get = read_frame(&mut stream);
        assert_eq!(get.frame_type, FrameType::Get);
        let info = FileInfo {
            size: data.len() as u64,
            mtime_ns: 0,
            kind: FileKind::File,
            hash: None,
        };
        let mut payload = [0; FileInfo::PAYLOAD_LEN];
        info.emit(&mut payload);
        let mut wrong = blake3_of(&data);
        wrong[0] ^= 1;
        let mut out = Frame::new(FrameType::FileInfo, Flags::NONE, get.stream, &payload).to_vec();
        out.extend(data_frame(get.stream, &data));
        out.extend(Frame::new(FrameType::Digest, Flags::END_STREAM, get.stream, &wrong).to_vec());
        stream.write_all(&out).expect("the file");
        // Until the client hangs up (it may send an ERROR first).
        let _ = stream.read_to_end(&mut Vec::new());
    });
    (addr, serving)
}

#[test]
fn cli_get_that_fails_verification_says_what_became_of_the_bytes() {
    let data = random_bytes(111, 70_000);
    let work = Scratch::new("files-cli-lying");
    let old = b"the old content".to_vec();
    fs::write(work.path().join("kept"), &old).unwrap();

    // Into a regular file: nothing is written, the old content stays.
    let (addr, serving) = lying_file_server(data.clone());
    let failed = cli(&["get", "--addr", &addr, "f", "kept"], work.path(), None);
    serving.join().expect("the lying server");
    assert_eq!(failed.code(), 255, "{}", failed.stderr);
    let line = one_line(&failed);
    assert!(line.contains("verification failed"), "{line}");
    assert!(line.contains("nothing was kept"), "{line}");
    assert_eq!(fs::read(work.path().join("kept")).unwrap(), old);
    assert_no_part_files(work.path());

    // Through a FIFO: the bytes went through and cannot be taken back; the line says so.
    let fifo = work.path().join("fifo");
    mkfifo(&fifo);
    let (sender, received) = mpsc::channel();
    let reading = fifo.clone();
    std::thread::spawn(move || sender.send(fs::read(reading)));
    let (addr, serving) = lying_file_server(data.clone());
    let failed = cli(&["get", "--addr", &addr, "f", "fifo"], work.path(), None);
    serving.join().expect("the lying server");
    assert_eq!(failed.code(), 255, "{}", failed.stderr);
    let line = one_line(&failed);
    assert!(
        line.contains("verification failed") && line.contains("are not the file"),
        "{line}"
    );
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    let read = received
        .recv_timeout(Duration::from_secs(10))
        .expect("the FIFO's reader got an end of file")
        .expect("read the FIFO");
    assert_eq!(read.len(), data.len());
    assert_no_part_files(work.path());
}
