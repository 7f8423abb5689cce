//! Formatting shared by the CLI, the workbench and the engine's log lines.

/// `1h02m`, `3m20s`, `12s`, `0.4s`; `?` when unknown.
pub fn human_secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "?".into();
    }
    if s < 10.0 {
        return format!("{s:.1}s");
    }
    let t = s.round() as u64;
    if t >= 3600 {
        format!("{}h{:02}m", t / 3600, (t % 3600) / 60)
    } else if t >= 60 {
        format!("{}m{:02}s", t / 60, t % 60)
    } else {
        format!("{t}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        use super::human_secs;
        assert_eq!(human_secs(0.42), "0.4s");
        assert_eq!(human_secs(42.0), "42s");
        assert_eq!(human_secs(200.0), "3m20s");
        assert_eq!(human_secs(3720.0), "1h02m");
        assert_eq!(human_secs(f64::NAN), "?");
    }
}
