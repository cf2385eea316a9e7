//! The one CPU weight both sides write for a spec's `cpu.shares`.

/// cgroup v1 `cpu.shares` → v2 `cpu.weight` as runc (≥ 1.3.2, 1.4) and
/// crun (≥ 1.23) convert it: a quadratic in log2(shares) through
/// (2, 1), (1024, 100) and (262144, 10000), so the v1 default (1024) gets
/// the v2 default (100). The linear map they used before gave 1024 → 39.
/// 0 = unset. The guest's cgroup and the host's sandbox cgroup both get
/// this, so it lives with the contract they share.
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        262_144.. => 10_000,
        _ => {
            let l = (shares as f64).log2();
            let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
            // In 1..=10000 by construction; the clamp only guards rounding.
            (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_to_weight_as_runc() {
        // runc >= 1.3.2 / crun >= 1.23 (and the values kubernetes documents).
        for (shares, weight) in [
            (0, 0),
            (1, 1),
            (2, 1),
            (3, 2),
            (10, 4),
            (100, 17),
            (512, 59),
            (1000, 99),
            (1024, 100),
            (2000, 170),
            (2048, 174),
            (4096, 303),
            (100_000, 4340),
            (262_143, 10_000),
            (262_144, 10_000),
            (u64::MAX, 10_000),
        ] {
            assert_eq!(cpu_shares_to_weight(shares), weight, "shares {shares}");
        }
        // Monotonic over the whole range.
        let mut last = 0;
        for s in (2..=262_144).step_by(97) {
            let w = cpu_shares_to_weight(s);
            assert!(w >= last && (1..=10_000).contains(&w), "{s} -> {w}");
            last = w;
        }
    }
}
