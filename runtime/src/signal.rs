//! Signal names as runc accepts them: `TERM`, `SIGTERM`, `15`.

use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

pub fn parse(s: &str) -> Result<i32, UnknownSignal> {
    let err = || UnknownSignal(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        // Real-time signals have no nix name but are valid numbers.
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(err())
        };
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    if let Some(rt) = name.strip_prefix("SIGRTMIN") {
        let base = libc::SIGRTMIN();
        return match rt {
            "" => Ok(base),
            off => off
                .strip_prefix('+')
                .and_then(|o| o.parse::<i32>().ok())
                .map(|o| base + o)
                .filter(|n| *n <= libc::SIGRTMAX())
                .ok_or_else(err),
        };
    }
    name.parse::<Signal>().map(|s| s as i32).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("TERM"), Ok(15));
        assert_eq!(parse("SIGKILL"), Ok(9));
        assert_eq!(parse("kill"), Ok(9));
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("SIGRTMIN+1"), Ok(libc::SIGRTMIN() + 1));
        assert!(parse("FOO").is_err());
        assert!(parse("0").is_err());
        assert!(parse("65").is_err());
        assert_eq!(
            parse("NOPE").unwrap_err().to_string(),
            "unknown signal \"NOPE\""
        );
    }
}
