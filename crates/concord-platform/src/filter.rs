//! AIP-160 filters: parsed into an expression tree, checked against a service's schema of
//! filterable fields, and translated to SQL with bound values (never spliced text).
//!
//! Supported: comparisons `=`, `!=`, `<`, `<=`, `>`, `>=` and has `:`; `AND`, `OR`, `NOT`
//! and `-`; parentheses; juxtaposition as AND. As AIP-160 says, OR binds tighter than AND.
//! Values are quoted strings, bare words or integers.

use crate::error::{Error, Result};
use crate::sql::{Sql, SqlValue};

/// Longest filter accepted.
pub const MAX_FILTER_LEN: usize = 2048;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `:` (has)
    Has,
}

impl Op {
    fn sql(self) -> &'static str {
        match self {
            Op::Eq | Op::Has => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// All of.
    And(Vec<Expr>),
    /// Any of.
    Or(Vec<Expr>),
    /// Not.
    Not(Box<Expr>),
    /// `field op value`.
    Cmp {
        /// Field name.
        field: String,
        /// Operator.
        op: Op,
        /// Value as written (unquoted).
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Op(Op),
    And,
    Or,
    Not,
    Minus,
    Word(String),
    Quoted(String),
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push((pos, Tok::LParen));
                i += 1;
            }
            ')' => {
                out.push((pos, Tok::RParen));
                i += 1;
            }
            ':' => {
                out.push((pos, Tok::Op(Op::Has)));
                i += 1;
            }
            '=' => {
                out.push((pos, Tok::Op(Op::Eq)));
                i += 1;
            }
            '!' | '<' | '>' => {
                let next_eq = chars.get(i + 1).map(|x| x.1) == Some('=');
                let op = match (c, next_eq) {
                    ('!', true) => Op::Ne,
                    ('<', true) => Op::Le,
                    ('>', true) => Op::Ge,
                    ('<', false) => Op::Lt,
                    ('>', false) => Op::Gt,
                    _ => {
                        return Err(filter_error(format!(
                            "unexpected '!' at position {pos}; did you mean '!='?"
                        )))
                    }
                };
                out.push((pos, Tok::Op(op)));
                i += if next_eq { 2 } else { 1 };
            }
            '-' if out.last().is_none_or(|(_, t)| !matches!(t, Tok::Op(_))) => {
                out.push((pos, Tok::Minus));
                i += 1;
            }
            '"' | '\'' => {
                let quote = c;
                let mut v = String::new();
                i += 1;
                loop {
                    let Some(&(_, ch)) = chars.get(i) else {
                        return Err(filter_error(format!(
                            "unterminated string starting at position {pos}"
                        )));
                    };
                    i += 1;
                    if ch == '\\' {
                        if let Some(&(_, esc)) = chars.get(i) {
                            v.push(esc);
                            i += 1;
                        }
                    } else if ch == quote {
                        break;
                    } else {
                        v.push(ch);
                    }
                }
                out.push((pos, Tok::Quoted(v)));
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].1.is_whitespace()
                    && !"()=!<>:\"'".contains(chars[i].1)
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|x| x.1).collect();
                out.push((
                    pos,
                    match word.as_str() {
                        "AND" => Tok::And,
                        "OR" => Tok::Or,
                        "NOT" => Tok::Not,
                        _ => Tok::Word(word),
                    },
                ));
            }
        }
    }
    Ok(out)
}

fn filter_error(msg: impl Into<String>) -> Error {
    Error::invalid("filter", msg)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    i: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.1)
    }
    fn pos(&self) -> String {
        self.toks.get(self.i).map_or("the end".to_string(), |t| format!("position {}", t.0))
    }
    fn expression(&mut self) -> Result<Expr> {
        let mut parts = vec![self.factor()?];
        loop {
            match self.peek() {
                Some(Tok::And) => {
                    self.i += 1;
                    parts.push(self.factor()?);
                }
                Some(Tok::RParen) | None => break,
                // Juxtaposition is AND.
                Some(_) => parts.push(self.factor()?),
            }
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::And(parts) })
    }
    fn factor(&mut self) -> Result<Expr> {
        let mut parts = vec![self.term()?];
        while self.peek() == Some(&Tok::Or) {
            self.i += 1;
            parts.push(self.term()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::Or(parts) })
    }
    fn term(&mut self) -> Result<Expr> {
        match self.peek() {
            Some(Tok::Not) | Some(Tok::Minus) => {
                self.depth += 1;
                if self.depth > 16 {
                    return Err(filter_error("NOT and parentheses nested more than 16 deep"));
                }
                self.i += 1;
                let inner = self.term()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner)))
            }
            Some(Tok::LParen) => {
                self.depth += 1;
                if self.depth > 16 {
                    return Err(filter_error("parentheses nested more than 16 deep"));
                }
                self.i += 1;
                let e = self.expression()?;
                if self.peek() != Some(&Tok::RParen) {
                    return Err(filter_error(format!("expected ')' at {}", self.pos())));
                }
                self.i += 1;
                self.depth -= 1;
                Ok(e)
            }
            Some(Tok::Word(_)) => self.restriction(),
            _ => Err(filter_error(format!("expected a field name at {}", self.pos()))),
        }
    }
    fn restriction(&mut self) -> Result<Expr> {
        let Some(Tok::Word(field)) = self.peek().cloned() else {
            return Err(filter_error(format!("expected a field name at {}", self.pos())));
        };
        self.i += 1;
        let Some(Tok::Op(op)) = self.peek().cloned() else {
            return Err(filter_error(format!(
                "expected an operator (=, !=, <, <=, >, >=, :) after '{field}' at {}",
                self.pos()
            )));
        };
        self.i += 1;
        let value = match self.peek().cloned() {
            Some(Tok::Word(w)) => w,
            Some(Tok::Quoted(q)) => q,
            _ => {
                return Err(filter_error(format!(
                    "expected a value after '{field}' at {}",
                    self.pos()
                )))
            }
        };
        self.i += 1;
        Ok(Expr::Cmp { field, op, value })
    }
}

/// Parses a filter; `None` for an empty one.
pub fn parse(filter: &str) -> Result<Option<Expr>> {
    if filter.len() > MAX_FILTER_LEN {
        return Err(filter_error(format!("longer than {MAX_FILTER_LEN} bytes")));
    }
    if filter.trim().is_empty() {
        return Ok(None);
    }
    let mut p = Parser { toks: lex(filter)?, i: 0, depth: 0 };
    let e = p.expression()?;
    if p.i != p.toks.len() {
        return Err(filter_error(format!("unexpected ')' at {}", p.pos())));
    }
    Ok(Some(e))
}

/// The type of a filterable field.
#[derive(Debug, Clone, Copy)]
pub enum FieldType {
    /// Free text; `=` and `!=` only.
    Text,
    /// Integer; every comparison.
    Int,
    /// One of the listed names (the enum value without its prefix, or with it).
    Enum {
        /// Prefix of the proto enum values, for example `PERSON_CATEGORY_`.
        prefix: &'static str,
        /// Accepted short names, as stored.
        values: &'static [&'static str],
    },
}

/// A field a service lets callers filter on.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Name in the filter.
    pub name: &'static str,
    /// SQL; `{}` stands for the bound value, for example `p.category = {}` or
    /// `EXISTS (SELECT 1 FROM person_nationalities n WHERE n.person_id = p.id AND n.state = {})`.
    /// Without `{}`, the SQL is a column compared with the operator.
    pub sql: &'static str,
    /// The value's type.
    pub ty: FieldType,
    /// Whether only `=` and `:` are allowed (membership tests like nationality).
    pub equality_only: bool,
}

/// Translates a parsed filter to SQL over `schema`, naming the field at fault otherwise.
pub fn to_sql(expr: &Expr, schema: &[Field]) -> Result<Sql> {
    let mut sql = Sql::default();
    write(expr, schema, &mut sql)?;
    Ok(sql)
}

fn write(expr: &Expr, schema: &[Field], sql: &mut Sql) -> Result<()> {
    match expr {
        Expr::And(parts) | Expr::Or(parts) => {
            let joiner = if matches!(expr, Expr::And(_)) { " AND " } else { " OR " };
            sql.push("(");
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    sql.push(joiner);
                }
                write(p, schema, sql)?;
            }
            sql.push(")");
        }
        Expr::Not(inner) => {
            sql.push("(NOT ");
            write(inner, schema, sql)?;
            sql.push(")");
        }
        Expr::Cmp { field, op, value } => {
            let names = || schema.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
            let f = schema.iter().find(|f| f.name == field).ok_or_else(|| {
                filter_error(format!("unknown field '{field}'; filterable fields are: {}", names()))
            })?;
            let bound = match f.ty {
                FieldType::Text => {
                    if !matches!(op, Op::Eq | Op::Ne | Op::Has) {
                        return Err(filter_error(format!("'{field}' is text: use = or !=")));
                    }
                    SqlValue::Text(value.clone())
                }
                FieldType::Int => SqlValue::Int(value.parse().map_err(|_| {
                    filter_error(format!("'{field}' takes an integer, not '{value}'"))
                })?),
                FieldType::Enum { prefix, values } => {
                    if !matches!(op, Op::Eq | Op::Ne | Op::Has) {
                        return Err(filter_error(format!("'{field}' is an enum: use = or !=")));
                    }
                    let short = value.strip_prefix(prefix).unwrap_or(value);
                    let v = values.iter().find(|v| **v == short).ok_or_else(|| {
                        filter_error(format!(
                            "'{value}' is not a value of '{field}'; use one of: {}",
                            values.join(", ")
                        ))
                    })?;
                    SqlValue::Text((*v).to_string())
                }
            };
            if f.equality_only && !matches!(op, Op::Eq | Op::Has | Op::Ne) {
                return Err(filter_error(format!("'{field}' supports = and != only")));
            }
            let negate = *op == Op::Ne && f.sql.contains("{}");
            if negate {
                sql.push("(NOT ");
            }
            if f.sql.contains("{}") {
                // Every `{}` stands for the same value.
                for (i, part) in f.sql.split("{}").enumerate() {
                    if i > 0 {
                        sql.bind(bound.clone());
                    }
                    sql.push(part);
                }
            } else {
                sql.push(f.sql).push(" ").push(op.sql()).push(" ").bind(bound);
            }
            if negate {
                sql.push(")");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[Field] = &[
        Field {
            name: "category",
            sql: "p.category",
            ty: FieldType::Enum { prefix: "PERSON_CATEGORY_", values: &["CHILD", "ADULT_MALE"] },
            equality_only: false,
        },
        Field { name: "birth_year", sql: "p.birth_year", ty: FieldType::Int, equality_only: false },
        Field {
            name: "nationality",
            sql: "EXISTS (SELECT 1 FROM n WHERE n.state = {})",
            ty: FieldType::Text,
            equality_only: true,
        },
    ];

    fn sql(f: &str) -> Result<String> {
        let e = parse(f)?.expect("non-empty");
        Ok(to_sql(&e, SCHEMA)?.text().to_string())
    }

    #[test]
    fn or_binds_tighter_than_and() {
        assert_eq!(
            sql("category = CHILD AND birth_year >= 2010 OR birth_year < 1950").expect("ok"),
            "(p.category = $1 AND (p.birth_year >= $2 OR p.birth_year < $3))"
        );
    }

    #[test]
    fn accepts_full_enum_names_quotes_and_negation() {
        assert_eq!(sql("category = PERSON_CATEGORY_CHILD").expect("ok"), "p.category = $1");
        assert_eq!(
            sql("NOT nationality = \"FR\"").expect("ok"),
            "(NOT EXISTS (SELECT 1 FROM n WHERE n.state = $1))"
        );
        assert_eq!(sql("-birth_year = 3").expect("ok"), "(NOT p.birth_year = $1)");
    }

    #[test]
    fn rejects_malformed_filters_naming_what_is_wrong() {
        let deep = format!("{}birth_year = 1", "-".repeat(2000));
        for (f, needle) in [
            ("category = ", "expected a value"),
            ("colour = red", "unknown field 'colour'"),
            ("category = PIRATE", "not a value of 'category'"),
            ("birth_year = soon", "integer"),
            ("(birth_year = 1", "expected ')'"),
            ("birth_year = 1)", "unexpected ')'"),
            ("nationality > \"FR\"", "use = or !="),
            ("name = \"abc", "unterminated"),
            (deep.as_str(), "nested"),
        ] {
            let err = sql(f).expect_err(f).to_string();
            assert!(err.contains(needle), "{f}: {err}");
            assert!(err.contains("filter"), "{f}: {err}");
        }
    }

    #[test]
    fn values_are_bound_never_spliced() {
        let s = sql("nationality = \"FR') OR 1=1 --\"").expect("ok");
        assert!(!s.contains("1=1"));
    }
}
