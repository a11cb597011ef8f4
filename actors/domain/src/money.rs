//! Money: rust_decimal amounts with an ISO 4217 currency. Never floats.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Decimal places every stored amount is rounded to (cents). Unit prices may carry more.
pub const MONEY_SCALE: u32 = 2;
/// Decimal places a unit price may carry (e.g. 0.0125 per screw).
pub const UNIT_PRICE_SCALE_MAX: u32 = 4;

/// An ISO 4217 alphabetic currency code, three upper-case letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Currency([u8; 3]);

// Written as the code itself, without the allocation `into = "String"` would make.
impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be three upper-case letters (ISO 4217), got {0:?}")]
    Currency(String),
    #[error("amount {0:?} is not a decimal number")]
    Amount(String),
    #[error("amount must not be negative, got {0}")]
    Negative(Decimal),
    #[error("amount has more than {max} decimal places: {got}")]
    Scale { got: Decimal, max: u32 },
    #[error("currencies differ: {0} and {1}")]
    Mismatch(Currency, Currency),
    #[error("amount overflow")]
    Overflow,
    #[error("amount must be at most {AMOUNT_MAX}, got {0}")]
    TooLarge(Decimal),
}

/// The largest amount orderd takes in (a price, a credit limit, receivables, a spending
/// limit): 10^15. It keeps every sum orderd forms far inside a `Decimal` (about 7.9 * 10^28):
/// a line is at most 10^6 units (10^21), an order at most 1,000 lines (10^24), and what counts
/// towards credit exposure stays near the credit limit (invariant 3).
pub const AMOUNT_MAX: Decimal = Decimal::from_parts(2_764_472_320, 232_830, 0, false, 0);

impl Currency {
    pub fn parse(s: &str) -> Result<Currency, MoneyError> {
        let b = s.trim().as_bytes();
        match b {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => {
                Ok(Currency([*a, *b, *c]))
            }
            _ => Err(MoneyError::Currency(s.to_owned())),
        }
    }
    pub fn as_str(&self) -> &str {
        // The constructor only admits ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}
impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, MoneyError> {
        Currency::parse(&s)
    }
}
impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Digits a `Decimal` holds exactly (its mantissa is 96 bits: 28 digits always fit).
pub const DECIMAL_DIGITS_MAX: usize = 28;

/// An amount in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount: Decimal,
    pub currency: Currency,
}

impl Money {
    /// Zero with cents (`0.00`).
    pub fn zero(currency: Currency) -> Money {
        Money {
            amount: Decimal::new(0, MONEY_SCALE),
            currency,
        }
    }

    /// Parses a non-negative amount such as `"12.50"` with at most `scale_max` decimals, written
    /// as a plain decimal: digits and at most one point, no sign or exponent, and no more digits
    /// than a `Decimal` holds exactly (it would round them away).
    pub fn parse(amount: &str, currency: Currency, scale_max: u32) -> Result<Money, MoneyError> {
        let text = amount.trim();
        let digits = text.strip_prefix('-').unwrap_or(text);
        let plain = digits.chars().filter(|c| *c == '.').count() <= 1
            && digits.chars().any(|c| c.is_ascii_digit())
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.chars().filter(char::is_ascii_digit).count() <= DECIMAL_DIGITS_MAX;
        let bad = || MoneyError::Amount(amount.to_owned());
        if !plain {
            return Err(bad());
        }
        let amount: Decimal = text.parse().map_err(|_| bad())?;
        Money::new(amount, currency, scale_max)
    }

    pub fn new(amount: Decimal, currency: Currency, scale_max: u32) -> Result<Money, MoneyError> {
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(MoneyError::Negative(amount));
        }
        if amount > AMOUNT_MAX {
            return Err(MoneyError::TooLarge(amount));
        }
        if amount.normalize().scale() > scale_max {
            return Err(MoneyError::Scale {
                got: amount,
                max: scale_max,
            });
        }
        Ok(Money { amount, currency })
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let mut amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::Overflow)?;
        // Keep the finer scale: 0.00 + 0 is "0.00", not "0" (rust_decimal hands back the
        // other operand unchanged when one of them is zero).
        amount.rescale(self.amount.scale().max(other.amount.scale()));
        Ok(Money {
            amount,
            currency: self.currency,
        })
    }

    /// Subtraction that never goes below zero is not what we want for credit: callers
    /// compare first. This one fails on overflow only.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_sub(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            amount,
            currency: self.currency,
        })
    }

    /// `unit price × quantity`, rounded half away from zero to cents.
    pub fn times(self, qty: u32) -> Result<Money, MoneyError> {
        let amount = self
            .amount
            .checked_mul(Decimal::from(qty))
            .ok_or(MoneyError::Overflow)?
            .round_dp_with_strategy(MONEY_SCALE, RoundingStrategy::MidpointAwayFromZero);
        Ok(Money {
            amount,
            currency: self.currency,
        })
    }

    pub fn sum<'a>(
        currency: Currency,
        items: impl IntoIterator<Item = &'a Money>,
    ) -> Result<Money, MoneyError> {
        items
            .into_iter()
            .try_fold(Money::zero(currency), |acc, m| acc.checked_add(*m))
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::Mismatch(self.currency, other.currency))
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    // Parsing, scale limits and arithmetic behave like an accountant expects.
    #[test]
    fn money_arithmetic_is_exact() {
        assert_eq!(AMOUNT_MAX, Decimal::from(10u64.pow(15)));
        assert!(Money::parse("1000000000000000", eur(), 2).is_ok());
        assert!(matches!(
            Money::parse("1000000000000000.01", eur(), 2),
            Err(MoneyError::TooLarge(_))
        ));
        let p = Money::parse("0.0125", eur(), UNIT_PRICE_SCALE_MAX).unwrap();
        assert_eq!(p.times(3).unwrap().amount.to_string(), "0.04"); // 0.0375 -> 0.04
        let a = Money::parse("0.10", eur(), 2).unwrap();
        let b = Money::parse("0.20", eur(), 2).unwrap();
        assert_eq!(a.checked_add(b).unwrap().amount.to_string(), "0.30");
        let zero = Money::zero(eur());
        assert_eq!(zero.checked_add(zero).unwrap().amount.to_string(), "0.00");
        let whole = Money::parse("0", eur(), 2).unwrap();
        assert_eq!(whole.checked_add(zero).unwrap().amount.to_string(), "0.00");
        assert!(matches!(
            Money::parse("1.234", eur(), 2),
            Err(MoneyError::Scale { .. })
        ));
        assert!(matches!(
            Money::parse("-1", eur(), 2),
            Err(MoneyError::Negative(_))
        ));
        assert!(matches!(
            Money::parse("abc", eur(), 2),
            Err(MoneyError::Amount(_))
        ));
        // Only plain decimals: no exponent, and no digits a Decimal would round away.
        for text in [
            "1e-2",
            "1E2",
            ".",
            "1.2.3",
            "+1",
            "1234567890123456789012345678.5",
        ] {
            assert!(
                matches!(Money::parse(text, eur(), 4), Err(MoneyError::Amount(_))),
                "{text}"
            );
        }
        assert!(Money::parse(" 12.50 ", eur(), 2).is_ok());
        assert!(Money::parse(".5", eur(), 2).is_ok());
        let usd = Money::zero(Currency::parse("USD").unwrap());
        assert!(matches!(a.checked_add(usd), Err(MoneyError::Mismatch(..))));
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
    }
}
