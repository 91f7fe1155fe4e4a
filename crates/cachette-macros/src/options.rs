//! Parsing `name = value` options of the attributes, with errors that point
//! at the offending token.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::{
    Expr, ExprArray, ExprLit, Lit, LitStr, Meta, Path, Token, parse::Parser,
    punctuated::Punctuated, spanned::Spanned,
};

/// One option value.
pub(crate) enum Value {
    Str(LitStr),
    Strs(Vec<LitStr>),
    Bool(bool),
    Path(Path),
}

/// The options of one attribute, by name, in order.
pub(crate) struct Options {
    pub(crate) items: Vec<(String, Span, Value)>,
}

fn value(expr: &Expr) -> syn::Result<Value> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(Value::Str(s.clone())),
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(Value::Bool(b.value)),
        Expr::Array(ExprArray { elems, .. }) => elems
            .iter()
            .map(|e| match e {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => Ok(s.clone()),
                other => Err(syn::Error::new(other.span(), "expected a string literal")),
            })
            .collect::<syn::Result<Vec<_>>>()
            .map(Value::Strs),
        Expr::Path(path) => Ok(Value::Path(path.path.clone())),
        other => Err(syn::Error::new(
            other.span(),
            "expected a string, a list of strings, a boolean or a path",
        )),
    }
}

impl Options {
    /// Parses `a = "x", b = ["y"], c = true, d = some::path`, accepting only `known` names.
    pub(crate) fn parse(args: TokenStream, macro_name: &str, known: &[&str]) -> syn::Result<Self> {
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
        let mut items: Vec<(String, Span, Value)> = Vec::new();
        for meta in metas {
            let Meta::NameValue(nv) = meta else {
                return Err(syn::Error::new(
                    meta.span(),
                    format!("#[{macro_name}] options are written `name = value`"),
                ));
            };
            let name = nv
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            if !known.contains(&name.as_str()) {
                return Err(syn::Error::new(
                    nv.path.span(),
                    format!(
                        "unknown #[{macro_name}] option `{name}` (expected one of: {})",
                        known.join(", ")
                    ),
                ));
            }
            if items.iter().any(|(n, _, _)| *n == name) {
                return Err(syn::Error::new(
                    nv.path.span(),
                    format!("option `{name}` is given twice"),
                ));
            }
            items.push((name, nv.path.span(), value(&nv.value)?));
        }
        Ok(Self { items })
    }

    fn get(&self, name: &str) -> Option<(&Span, &Value)> {
        self.items
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, s, v)| (s, v))
    }

    pub(crate) fn string(&self, name: &str) -> syn::Result<Option<LitStr>> {
        match self.get(name) {
            None => Ok(None),
            Some((_, Value::Str(s))) => Ok(Some(s.clone())),
            Some((span, _)) => Err(syn::Error::new(*span, format!("`{name}` takes a string"))),
        }
    }

    pub(crate) fn strings(&self, name: &str) -> syn::Result<Vec<LitStr>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some((_, Value::Strs(v))) => Ok(v.clone()),
            Some((_, Value::Str(s))) => Ok(vec![s.clone()]),
            Some((span, _)) => Err(syn::Error::new(
                *span,
                format!("`{name}` takes a list of strings, e.g. [\"a\", \"b\"]"),
            )),
        }
    }

    pub(crate) fn bool(&self, name: &str) -> syn::Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(*b)),
            Some((span, _)) => Err(syn::Error::new(
                *span,
                format!("`{name}` takes `true` or `false`"),
            )),
        }
    }

    pub(crate) fn path(&self, name: &str) -> syn::Result<Option<Path>> {
        match self.get(name) {
            None => Ok(None),
            Some((_, Value::Path(p))) => Ok(Some(p.clone())),
            Some((span, _)) => Err(syn::Error::new(
                *span,
                format!("`{name}` takes a path to a function, e.g. `unless = crate::is_admin`"),
            )),
        }
    }

    /// A duration option, checked now: `"300ms"`, `"5m"`, `"1h 30m"`.
    pub(crate) fn duration(&self, name: &str) -> syn::Result<Option<Duration>> {
        let Some(lit) = self.string(name)? else {
            return Ok(None);
        };
        humantime::parse_duration(lit.value().trim())
            .map(Some)
            .map_err(|e| {
                syn::Error::new(
                    lit.span(),
                    format!(
                        "`{}` is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h\"",
                        lit.value()
                    ),
                )
            })
    }
}

/// `Some(n)` as tokens, or `None`.
pub(crate) fn option_u64(value: Option<u64>) -> TokenStream {
    match value {
        Some(n) => quote::quote!(::core::option::Option::Some(#n)),
        None => quote::quote!(::core::option::Option::None),
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
