//! Kubernetes resource quantities: CPU in millicores (`100m`, `0.5`, `2`) and memory in bytes
//! (`64Mi`, `1G`, `512k`, `1048576`), with every suffix Kubernetes accepts up to `Ei`/`E`. Both
//! cross the wire as the same strings users write.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// CPU in thousandths of a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(pub u64);

/// Memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory(pub u64);

impl Cpu {
    pub fn millis(self) -> u64 {
        self.0
    }
}

impl Memory {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Cpu {
    type Err = String;

    fn from_str(s: &str) -> Result<Cpu, String> {
        let bad = || {
            format!(
                "{s:?} is not a CPU quantity (use cores like \"0.5\" or millicores like \"500m\")"
            )
        };
        let s = s.trim();
        if let Some(m) = s.strip_suffix('m') {
            return m.parse::<u64>().map(Cpu).map_err(|_| bad());
        }
        // Whole cores exactly: going through f64 would lose precision past 2^53 millicores.
        if let Ok(cores) = s.parse::<u64>() {
            return cores.checked_mul(1000).map(Cpu).ok_or_else(bad);
        }
        let cores: f64 = s.parse().map_err(|_| bad())?;
        if !cores.is_finite() || !(0.0..=1e9).contains(&cores) {
            return Err(bad());
        }
        Ok(Cpu((cores * 1000.0).round() as u64))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// Kubernetes' binary and decimal suffixes (its `resource.Quantity`), longest first so that `Ei`
/// is not read as `E` after an `i`.
const MEMORY_SUFFIXES: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("K", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

impl FromStr for Memory {
    type Err = String;

    fn from_str(s: &str) -> Result<Memory, String> {
        let bad = || {
            format!("{s:?} is not a memory quantity (use bytes or a suffix like \"64Mi\", \"1G\")")
        };
        let s = s.trim();
        let (number, unit) = MEMORY_SUFFIXES
            .iter()
            .find_map(|(suffix, unit)| s.strip_suffix(suffix).map(|n| (n, *unit)))
            .unwrap_or((s, 1));
        // Whole numbers exactly, so every `Memory` survives Display → parse.
        if let Ok(whole) = number.parse::<u64>() {
            return whole.checked_mul(unit).map(Memory).ok_or_else(bad);
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        if !value.is_finite() || value < 0.0 {
            return Err(bad());
        }
        let bytes = value * unit as f64;
        if bytes > u64::MAX as f64 / 2.0 {
            return Err(bad());
        }
        Ok(Memory(bytes.round() as u64))
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            ("Ei", 1u64 << 60),
            ("Pi", 1 << 50),
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        for (suffix, unit) in units {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(Cpu);
string_serde!(Memory);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_cpu_survives_display_then_parse(millis in any::<u64>()) {
            prop_assert_eq!(Cpu(millis).to_string().parse::<Cpu>(), Ok(Cpu(millis)));
        }

        #[test]
        fn every_memory_survives_display_then_parse(bytes in any::<u64>()) {
            prop_assert_eq!(Memory(bytes).to_string().parse::<Memory>(), Ok(Memory(bytes)));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,24}") {
            let _ = text.parse::<Cpu>();
            let _ = text.parse::<Memory>();
        }
    }

    #[test]
    fn huge_whole_numbers_parse_exactly_or_not_at_all() {
        assert_eq!(
            "18446744073709551615".parse::<Memory>(),
            Ok(Memory(u64::MAX))
        );
        assert!("18446744073709551615Ki".parse::<Memory>().is_err());
        assert_eq!(
            "18446744073709551".parse::<Cpu>(),
            Ok(Cpu(18_446_744_073_709_551_000))
        );
        assert!("18446744073709552".parse::<Cpu>().is_err());
    }

    #[test]
    fn cpu_forms() {
        assert_eq!("100m".parse::<Cpu>(), Ok(Cpu(100)));
        assert_eq!("0.5".parse::<Cpu>(), Ok(Cpu(500)));
        assert_eq!("2".parse::<Cpu>(), Ok(Cpu(2000)));
        assert!("lots".parse::<Cpu>().is_err());
        assert!("-1".parse::<Cpu>().is_err());
        assert_eq!(Cpu(250).to_string(), "250m");
        assert_eq!(Cpu(2000).to_string(), "2");
    }

    #[test]
    fn memory_forms() {
        assert_eq!("64Mi".parse::<Memory>(), Ok(Memory(64 << 20)));
        assert_eq!("1G".parse::<Memory>(), Ok(Memory(1_000_000_000)));
        assert_eq!("512k".parse::<Memory>(), Ok(Memory(512_000)));
        assert_eq!("1048576".parse::<Memory>(), Ok(Memory(1 << 20)));
        assert!("64MB".parse::<Memory>().is_err());
        assert_eq!("1Ei".parse::<Memory>(), Ok(Memory(1 << 60)));
        assert_eq!("2Pi".parse::<Memory>(), Ok(Memory(2 << 50)));
        assert_eq!(
            "3E".parse::<Memory>(),
            Ok(Memory(3_000_000_000_000_000_000))
        );
        assert_eq!("1P".parse::<Memory>(), Ok(Memory(1_000_000_000_000_000)));
        assert!("16Ei".parse::<Memory>().is_err(), "2^64 does not fit");
        assert_eq!(Memory(1 << 60).to_string(), "1Ei");
        assert_eq!(Memory(3 << 40).to_string(), "3Ti");
        assert_eq!(Memory(128 << 20).to_string(), "128Mi");
        assert_eq!(Memory(1000).to_string(), "1000");
    }
}
