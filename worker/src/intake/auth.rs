//! Bearer tokens of the gateway, read from `ORDERPIPE_INTAKE_TOKENS` (a Kubernetes Secret's key):
//! who may submit orders and who may read their status. Owns the format and the 401/403 decision; must not
//! log or keep a token in clear (only SHA-256 digests are held and compared).
//!
//! Format: one token per line, optionally followed by whitespace and a comma-separated list of
//! scopes (`orders:write`, `orders:read`); a token without scopes has both. Blank lines and lines
//! starting with `#` are ignored.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /v1/orders`.
    Write,
    /// `GET /v1/orders/{id}`.
    Read,
}

impl Scope {
    const ALL: [Scope; 2] = [Scope::Write, Scope::Read];

    pub const fn code(self) -> &'static str {
        match self {
            Self::Write => "orders:write",
            Self::Read => "orders:read",
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header, or an unknown token: 401.
    Unauthenticated,
    /// A known token without the scope: 403.
    Forbidden(Scope),
}

/// The tokens could not be used; names the line.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error(
        "{VARIABLE} line {line}: unknown scope {scope:?} (expected orders:write or orders:read)"
    )]
    UnknownScope { line: usize, scope: String },
    #[error("{VARIABLE} holds no token")]
    Empty,
}

/// Where the tokens come from, for the errors above.
const VARIABLE: &str = orderpipe_api::contract::env::INTAKE_TOKENS;

type Digest32 = [u8; 32];

/// The accepted tokens, by digest.
#[derive(Debug, Default)]
pub struct Tokens {
    scopes: HashMap<Digest32, Vec<Scope>>,
}

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// The tokens in `text` (the Secret's value); at least one.
    pub fn from_text(text: &str) -> Result<Self, TokensError> {
        let tokens =
            Self::parse(text).map_err(|(line, scope)| TokensError::UnknownScope { line, scope })?;
        if tokens.scopes.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(tokens)
    }

    /// Parses the text; `Err((line, scope))` names the first unknown scope.
    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut scopes = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let Some(token) = words.next() else { continue };
            let granted = match words.next() {
                None => Scope::ALL.to_vec(),
                Some(list) => list
                    .split(',')
                    .map(|code| {
                        Scope::ALL
                            .into_iter()
                            .find(|scope| scope.code() == code)
                            .ok_or_else(|| (index + 1, code.to_owned()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            scopes.insert(digest(token), granted);
        }
        Ok(Self { scopes })
    }

    /// Checks an `Authorization` header value for `scope`.
    pub fn check(&self, authorization: Option<&str>, scope: Scope) -> Result<(), Denied> {
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(Denied::Unauthenticated)?;
        match self.scopes.get(&digest(token)) {
            None => Err(Denied::Unauthenticated),
            Some(granted) if granted.contains(&scope) => Ok(()),
            Some(_) => Err(Denied::Forbidden(scope)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_their_scopes_and_unknown_or_missing_ones_are_unauthenticated() {
        let tokens = Tokens::parse("# shop A\nfull\nreader orders:read\n\nwriter orders:write\n")
            .expect("parses");
        assert_eq!(tokens.check(Some("Bearer full"), Scope::Write), Ok(()));
        assert_eq!(tokens.check(Some("Bearer full"), Scope::Read), Ok(()));
        assert_eq!(tokens.check(Some("Bearer reader"), Scope::Read), Ok(()));
        assert_eq!(
            tokens.check(Some("Bearer reader"), Scope::Write),
            Err(Denied::Forbidden(Scope::Write))
        );
        assert_eq!(
            tokens.check(Some("Bearer writer"), Scope::Read),
            Err(Denied::Forbidden(Scope::Read))
        );
        for header in [
            None,
            Some("Bearer "),
            Some("Basic full"),
            Some("Bearer nope"),
        ] {
            assert_eq!(
                tokens.check(header, Scope::Read),
                Err(Denied::Unauthenticated),
                "{header:?}"
            );
        }
    }

    #[test]
    fn an_unknown_scope_is_refused_with_its_line() {
        assert_eq!(
            Tokens::parse("a\nb orders:delete").map(|_| ()),
            Err((2, "orders:delete".to_owned()))
        );
    }
}
