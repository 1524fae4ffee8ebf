//! The error every parser and validator returns: a list of problems, each naming the field it is
//! about. Parsers collect all the problems in a file before failing, so a user fixes a spec in one
//! round trip instead of one error at a time.

use std::fmt;

/// One thing wrong with a spec, e.g. `web.liveness.period: "1x" is not a duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a field path starting with the service name (`web.ports[1].name`), or the file
    /// (`web.yaml[doc 2]`, or `web.yaml:3:7` for a YAML syntax error).
    pub path: String,
    /// What is wrong, lowercase, naming the offending value.
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a file or spec, in the order they were found. `Display` prints one
/// `path: message` per line, ready for a terminal or an HTTP 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.problems))]
pub struct SpecError {
    pub problems: Vec<Problem>,
}

impl SpecError {
    /// `Ok` when there are no problems, so collectors end with `SpecError::check(problems)?`.
    pub fn check(problems: Vec<Problem>) -> Result<(), SpecError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SpecError { problems })
        }
    }
}

impl From<Problem> for SpecError {
    fn from(problem: Problem) -> SpecError {
        SpecError {
            problems: vec![problem],
        }
    }
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The known word closest to `word`, if any is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    // 0.8 Jaro-Winkler: catches `readyness`, `enviroment`, `replica`, but not `foo` → `image`.
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(word, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}
