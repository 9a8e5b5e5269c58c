//! Checked parsers for numeric command-line values. clap reports their errors as usage errors
//! (exit status 2) naming the flag, so no out-of-range number reaches a function that would
//! panic on it (`Duration::from_secs_f64` on infinity, a huge allocation, NaN in a table).

/// The longest `qattn health --timeout`, in seconds (one hour: a health probe that needs longer
/// is a hung server).
pub(crate) const MAX_TIMEOUT_S: f64 = 3600.0;

/// A finite number of seconds in (0, [`MAX_TIMEOUT_S`]].
pub(crate) fn timeout_secs(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !x.is_finite() || x <= 0.0 || x > MAX_TIMEOUT_S {
        return Err(format!(
            "{s} is out of range: give a finite number of seconds > 0 and ≤ {MAX_TIMEOUT_S}"
        ));
    }
    Ok(x)
}

/// A finite number ≥ 0 and ≤ `max`.
pub(crate) fn finite_in(s: &str, max: f64) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !x.is_finite() || !(0.0..=max).contains(&x) {
        return Err(format!(
            "{s} is out of range: give a finite number in [0, {max}]"
        ));
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timeouts() {
        assert_eq!(timeout_secs("5"), Ok(5.0));
        assert_eq!(timeout_secs("0.25"), Ok(0.25));
        assert_eq!(timeout_secs("3600"), Ok(3600.0));
        for bad in [
            "inf", "-inf", "NaN", "nan", "1e20", "-1", "0", "-0", "3600.5", "", "x",
        ] {
            let err = timeout_secs(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    proptest! {
        /// Every accepted timeout converts to a Duration without panicking; every f64 outside
        /// (0, max] (including the non-finite ones) is rejected.
        #[test]
        fn any_float_is_accepted_only_in_range(x in prop_oneof![
            any::<f64>(),
            Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(f64::NAN),
            Just(0.0), Just(-0.0), Just(1e20), Just(f64::MAX), Just(f64::MIN_POSITIVE),
        ]) {
            match timeout_secs(&x.to_string()) {
                Ok(t) => {
                    prop_assert!(t > 0.0 && t <= MAX_TIMEOUT_S);
                    let _ = std::time::Duration::from_secs_f64(t);
                }
                Err(_) => prop_assert!(!(x > 0.0 && x <= MAX_TIMEOUT_S)),
            }
            match finite_in(&x.to_string(), 100.0) {
                Ok(v) => prop_assert!((0.0..=100.0).contains(&v)),
                Err(_) => prop_assert!(!(0.0..=100.0).contains(&x)),
            }
        }

        /// Arbitrary text never panics the parsers.
        #[test]
        fn any_text_is_a_value_or_an_error(s in ".{0,24}") {
            let _ = timeout_secs(&s);
            let _ = finite_in(&s, 1.0);
        }
    }
}
