//! `monoreactor systemd-unit`: prints `docs/monoreactor.service` (or, with `--socket`,
//! `docs/monoreactor.socket`) with this binary's path, the root, the user and extra `serve`
//! flags filled in. The files are compiled in, so what is printed and what docs/ shows cannot
//! drift apart: the only differences are the filled-in values.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::failure::{Failure, print_stdout};

/// The service unit as docs/ shows it.
const SERVICE: &str = include_str!("../../docs/monoreactor.service");
/// The socket unit as docs/ shows it.
const SOCKET: &str = include_str!("../../docs/monoreactor.socket");

/// The binary's path in the unit as docs/ shows it.
#[cfg(test)]
const DOCS_BINARY: &str = "/usr/local/bin/monoreactor";
/// The root in the unit as docs/ shows it: the service's state directory.
const DOCS_ROOT: &str = "/var/lib/monoreactor";
/// Where systemd keeps state directories (`StateDirectory=NAME` is `/var/lib/NAME`).
const STATE_DIRECTORIES: &str = "/var/lib/";

/// The flags of `systemd-unit`.
#[derive(Args)]
pub struct SystemdUnitArgs {
    /// The server binary ExecStart= runs [default: this binary].
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// The root directory (absolute). Under /var/lib it is the unit's StateDirectory=, made
    /// for the service; elsewhere it must exist and --user must own it.
    #[arg(long, value_name = "DIR", default_value = DOCS_ROOT)]
    root: PathBuf,
    /// Run as this existing user instead of a DynamicUser= made for the service.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Print the socket unit (socket activation) instead of the service.
    #[arg(long)]
    socket: bool,
    /// More `serve` flags for ExecStart=, after `--` (no spaces or quotes inside one).
    #[arg(last = true, value_name = "SERVE_FLAGS")]
    serve: Vec<String>,
}

/// Prints the unit.
pub fn run(args: SystemdUnitArgs) -> Result<(), Failure> {
    if args.socket {
        return print_stdout(SOCKET);
    }
    let binary = match args.binary {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(|error| Failure::own(format!("cannot find this binary: {error}")))?,
    };
    let unit = service_unit(&binary, &args.root, args.user.as_deref(), &args.serve)
        .map_err(Failure::usage)?;
    print_stdout(&unit)
}

/// The service unit with `binary`, `root`, `user` (`None`: a DynamicUser) and `serve` flags
/// filled in; `Err`: a value systemd would misread, in one line.
fn service_unit(
    binary: &Path,
    root: &Path,
    user: Option<&str>,
    serve: &[String],
) -> Result<String, String> {
    let binary = unit_path(binary, "--binary")?;
    let root_text = unit_path(root, "--root")?;
    let state_directory = root_text
        .strip_prefix(STATE_DIRECTORIES)
        .filter(|name| !name.is_empty() && !name.contains('/'));
    if state_directory.is_none() && user.is_none() {
        return Err(format!(
            "--root {root_text}: outside {STATE_DIRECTORIES} a DynamicUser= would own nothing there; give --user NAME (who owns it), or a root under {STATE_DIRECTORIES}"
        ));
    }
    if let Some(user) = user {
        let valid = !user.is_empty()
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !valid {
            return Err(format!("--user {user:?}: not a user name"));
        }
    }
    let mut exec_start = format!("ExecStart={binary} serve --root {root_text}");
    for flag in serve {
        if flag.is_empty()
            || flag
                .chars()
                .any(|c| c.is_whitespace() || "\"'\\".contains(c))
        {
            return Err(format!(
                "serve flag {flag:?}: no spaces, quotes or backslashes in a unit's ExecStart= here; use a drop-in"
            ));
        }
        // `%` starts a specifier in a unit file, `$` a variable.
        exec_start += &format!(" {}", flag.replace('%', "%%").replace('$', "$$"));
    }
    let mut out = String::with_capacity(SERVICE.len() + 64);
    for line in SERVICE.lines() {
        let filled = if line.starts_with("ExecStart=") {
            exec_start.clone()
        } else if line == "DynamicUser=yes" {
            match user {
                Some(user) => format!("User={user}\nGroup={user}"),
                None => line.to_string(),
            }
        } else if line.starts_with("StateDirectory=") {
            match state_directory {
                Some(name) => format!("StateDirectory={name}"),
                // The root exists already, owned by --user: nothing for systemd to make.
                None => continue,
            }
        } else if line.starts_with('#') {
            line.to_string()
        } else {
            line.replace(DOCS_ROOT, &root_text)
        };
        out += &filled;
        out.push('\n');
    }
    Ok(out)
}

/// `path` as a unit file may hold it: absolute, UTF-8, no whitespace, quotes or specifiers.
fn unit_path(path: &Path, flag: &str) -> Result<String, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("{flag} {}: not UTF-8", path.display()))?;
    if !path.is_absolute() {
        return Err(format!("{flag} {text}: give an absolute path"));
    }
    // `/var/lib/..` would be `StateDirectory=..`, and `/var/lib/a/../../etc` a
    // `ReadWritePaths=` that is /etc: only a normalized path (no `.` or `..`, no `//`, no
    // trailing `/`) says what it names.
    let normalized = text == "/"
        || text
            .split('/')
            .skip(1)
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !normalized {
        return Err(format!(
            "{flag} {text}: give a normalized path (no `.` or `..` components, no `//`, no trailing `/`)"
        ));
    }
    if text
        .chars()
        .any(|c| c.is_whitespace() || "\"'\\%$".contains(c))
    {
        return Err(format!(
            "{flag} {text}: no spaces, quotes, `%` or `$` in a unit file's paths here"
        ));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_print_the_docs_file_itself() {
        let unit = service_unit(Path::new(DOCS_BINARY), Path::new(DOCS_ROOT), None, &[]).unwrap();
        assert_eq!(unit, SERVICE);
    }

    #[test]
    fn a_root_outside_var_lib_needs_a_user_and_loses_the_state_directory() {
        assert!(service_unit(Path::new("/bin/x"), Path::new("/srv/files"), None, &[]).is_err());
        let unit = service_unit(
            Path::new("/opt/mr/monoreactor"),
            Path::new("/srv/files"),
            Some("mr"),
            &["--max-conns".into(), "100%".into()],
        )
        .unwrap();
        assert!(unit.contains(
            "\nExecStart=/opt/mr/monoreactor serve --root /srv/files --max-conns 100%%\n"
        ));
        assert!(unit.contains("\nUser=mr\nGroup=mr\n"));
        assert!(unit.contains("\nReadWritePaths=/srv/files\n"));
        assert!(!unit.contains("DynamicUser") && !unit.contains("StateDirectory="));
        assert!(service_unit(Path::new("bin"), Path::new(DOCS_ROOT), None, &[]).is_err());
        assert!(
            service_unit(
                Path::new("/bin/x"),
                Path::new(DOCS_ROOT),
                None,
                &["a b".into()]
            )
            .is_err()
        );
    }

    /// `--root /var/lib/..` made `StateDirectory=..`, and `/var/lib/a/../../etc` a
    /// `ReadWritePaths=` that opens /etc: a path that is not normalized is refused.
    #[test]
    fn a_path_with_dot_components_is_refused() {
        for root in [
            "/var/lib/..",
            "/var/lib/.",
            "/var/lib/a/../../etc",
            "/var/lib//x",
            "/var/lib/x/",
        ] {
            let error =
                service_unit(Path::new("/bin/x"), Path::new(root), Some("u"), &[]).expect_err(root);
            assert!(error.contains("normalized"), "{root}: {error}");
        }
        assert!(
            service_unit(
                Path::new("/usr/bin/../bin/x"),
                Path::new(DOCS_ROOT),
                None,
                &[]
            )
            .is_err()
        );
        assert!(service_unit(Path::new("/bin/x"), Path::new("/var/lib/x"), None, &[]).is_ok());
    }
}
