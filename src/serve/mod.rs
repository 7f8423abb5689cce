//! The HTTP server (in progress).

use anyhow::Result;

pub fn run(_a: crate::cli::ServeArgs) -> Result<()> {
    anyhow::bail!("serve: not built yet")
}
