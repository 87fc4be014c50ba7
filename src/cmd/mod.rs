//! One module per subcommand, each holding its clap flags (`...Args`) and the function that
//! runs it, as cargo keeps its commands: [`serve`], [`stats`], [`systemd_unit`], [`access`], [`echo`], [`exec`], [`bench`](mod@bench), [`completions`], [`man`], and the
//! file commands in [`files`] (`get`, `put`, `ls`, `stat`, `rm`, `mkdir`).

pub mod access;
pub mod bench;
pub mod completions;
pub mod echo;
pub mod exec;
pub mod files;
pub mod man;
pub mod serve;
pub mod stats;
pub mod systemd_unit;
