//! `#[cached]`: memoize an async function or method in a named cache.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{FnArg, Ident, ItemFn, LitStr, Pat, ReturnType, Type, spanned::Spanned};

use crate::options::{Options, millis, option_u64};

const OPTIONS: &[&str] = &["cache", "ttl", "key", "tags", "cache_none"];

enum Returns {
    Plain,
    Result,
    Option,
}

fn classify(output: &ReturnType) -> Returns {
    let ReturnType::Type(_, ty) = output else {
        return Returns::Plain;
    };
    let Type::Path(path) = ty.as_ref() else {
        return Returns::Plain;
    };
    match path
        .path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .as_deref()
    {
        Some("Result") => Returns::Result,
        Some("Option") => Returns::Option,
        _ => Returns::Plain,
    }
}

/// The `{name}` placeholders of a key template.
fn placeholders(template: &LitStr) -> syn::Result<Vec<String>> {
    let text = template.value();
    let mut names = Vec::new();
    let mut rest = text.as_str();
    while let Some(open) = rest.find('{') {
        if rest[open..].starts_with("{{") {
            rest = &rest[open + 2..];
            continue;
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(syn::Error::new(
                template.span(),
                "unclosed `{` in the key template",
            ));
        };
        let name = rest[open + 1..open + close].trim();
        let name = name.split(':').next().unwrap_or(name).to_owned();
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(syn::Error::new(
                template.span(),
                format!(
                    "key placeholders name arguments, e.g. \"user:{{id}}\"; `{{{name}}}` is not an argument name"
                ),
            ));
        }
        names.push(name);
        rest = &rest[open + close + 1..];
    }
    Ok(names)
}

/// The template with placeholders turned into `*`, for `invalidate_all`.
fn template_pattern(template: &str) -> String {
    let mut out = String::new();
    let mut in_placeholder = false;
    for c in template.chars() {
        match (c, in_placeholder) {
            ('{', false) => {
                in_placeholder = true;
                out.push('*');
            }
            ('}', true) => in_placeholder = false,
            (_, true) => {}
            ('*' | '?' | '[' | ']' | '\\', false) => {
                out.push('\\');
                out.push(c);
            }
            (c, false) => out.push(c),
        }
    }
    out
}

struct Arg {
    name: Ident,
    ty: Box<Type>,
    ignored: bool,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let options = Options::parse(args, "cached", OPTIONS)?;
    let mut function: ItemFn = syn::parse2(item)?;
    if function.sig.asyncness.is_none() {
        return Err(syn::Error::new(
            function.sig.fn_token.span(),
            "#[cached] needs an `async fn` (its result is stored in a cache, which is async)",
        ));
    }
    let alias = options
        .string("cache")?
        .map_or_else(|| "default".to_owned(), |s| s.value());
    let ttl = option_u64(options.duration("ttl")?.map(millis));
    let tags: Vec<String> = options.strings("tags")?.iter().map(LitStr::value).collect();
    let cache_none = options.bool("cache_none")?.unwrap_or(false);
    let template = options.string("key")?;

    // Arguments: plain names; `self` is never part of the key; `#[cache_ignore]`
    // arguments neither (the attribute is removed from the output).
    let mut receiver = None;
    let mut arguments = Vec::new();
    for input in &mut function.sig.inputs {
        match input {
            FnArg::Receiver(r) => receiver = Some(r.self_token),
            FnArg::Typed(typed) => {
                let before = typed.attrs.len();
                typed.attrs.retain(|a| !a.path().is_ident("cache_ignore"));
                let ignored = typed.attrs.len() != before;
                let Pat::Ident(pat) = typed.pat.as_ref() else {
                    return Err(syn::Error::new(
                        typed.pat.span(),
                        "#[cached] arguments must be plain names (`id: u64`), not patterns",
                    ));
                };
                arguments.push(Arg {
                    name: pat.ident.clone(),
                    ty: typed.ty.clone(),
                    ignored,
                });
            }
        }
    }
    if cache_none && !matches!(classify(&function.sig.output), Returns::Option) {
        return Err(syn::Error::new(
            Span::call_site(),
            "`cache_none` only applies to functions returning `Option<T>`",
        ));
    }

    let name = function.sig.ident.clone();
    let name_str = name.to_string();
    let site = format_ident!("__CACHETTE_SITE_{}", name_str.to_uppercase());
    let uncached = format_ident!("__cachette_uncached_{}", name_str);
    let is_method = receiver.is_some();
    let site_ref = if is_method {
        quote!(Self::#site)
    } else {
        quote!(#site)
    };

    // The key, and the arguments it is made of (for `invalidate`).
    let (key_expr, key_args, pattern) = match &template {
        Some(template) => {
            let names = placeholders(template)?;
            let mut used = Vec::new();
            for placeholder in &names {
                match arguments.iter().find(|a| a.name == placeholder) {
                    Some(arg) => {
                        if !used.iter().any(|a: &&Arg| a.name == arg.name) {
                            used.push(arg);
                        }
                    }
                    None => {
                        return Err(syn::Error::new(
                            template.span(),
                            format!(
                                "the key template names `{placeholder}`, which is not an argument of `{name_str}`"
                            ),
                        ));
                    }
                }
            }
            let pattern = template_pattern(&template.value());
            (
                quote!(::std::format!(#template)),
                used.into_iter().collect::<Vec<_>>(),
                quote!(::core::option::Option::Some(#pattern)),
            )
        }
        None => {
            let keyed: Vec<&Arg> = arguments.iter().filter(|a| !a.ignored).collect();
            let writes = keyed.iter().map(|a| {
                let arg = &a.name;
                quote_spanned!(a.ty.span()=> ::cachette::__private::key_arg(&mut __cachette_bytes, &#arg);)
            });
            (
                quote!({
                    let mut __cachette_bytes = ::std::vec::Vec::new();
                    #(#writes)*
                    #site_ref.bytes_key(&__cachette_bytes)
                }),
                keyed,
                quote!(::core::option::Option::None),
            )
        }
    };

    let helper = match classify(&function.sig.output) {
        Returns::Plain => quote!(cached_plain),
        Returns::Result => quote!(cached_result),
        Returns::Option => quote!(cached_option),
    };
    let call_args: Vec<&Ident> = arguments.iter().map(|a| &a.name).collect();
    let call = if is_method {
        quote!(Self::#uncached(self, #(#call_args),*))
    } else {
        quote!(#uncached(#(#call_args),*))
    };

    let vis = &function.vis;
    let attrs = &function.attrs;
    let sig = &function.sig;
    let block = &function.block;
    let mut uncached_sig = sig.clone();
    uncached_sig.ident = uncached.clone();
    let generics = &sig.generics;
    let where_clause = &sig.generics.where_clause;
    let output = &sig.output;
    let inputs = &sig.inputs;
    let key_params = key_args.iter().map(|a| {
        let (n, t) = (&a.name, &a.ty);
        quote!(#n: #t)
    });
    let site_item = quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        const #site: ::cachette::__private::CachedSite = ::cachette::__private::CachedSite {
            alias: #alias,
            path: ::core::concat!(::core::module_path!(), "::", #name_str),
            ttl_ms: #ttl,
            tags: &[#(#tags),*],
            pattern: #pattern,
            cache_none: #cache_none,
        };
    };
    let wrapper = quote! {
        #(#attrs)*
        #vis #sig {
            let __cachette_key: ::std::string::String = #key_expr;
            ::cachette::__private::#helper(&#site_ref, __cachette_key, #cache_none, move || #call).await
        }

        #[doc(hidden)]
        #[allow(clippy::too_many_arguments)]
        #uncached_sig #block
    };

    if is_method {
        let invalidate = format_ident!("{}_invalidate", name_str);
        let invalidate_all = format_ident!("{}_invalidate_all", name_str);
        let uncached_public = format_ident!("{}_uncached", name_str);
        let mut public_sig = sig.clone();
        public_sig.ident = uncached_public;
        let doc_one = format!("Removes the cached result of one call of [`Self::{name_str}`].");
        let doc_all = format!(
            "Removes the cached results of every call of [`Self::{name_str}`], on every tier and node."
        );
        let doc_uncached = format!("Calls [`Self::{name_str}`] without the cache.");
        Ok(quote! {
            #site_item
            #wrapper

            #[doc = #doc_one]
            #vis async fn #invalidate #generics (#(#key_params),*) #where_clause {
                ::cachette::__private::invalidate(&#site_ref, #key_expr).await
            }

            #[doc = #doc_all]
            #vis async fn #invalidate_all() {
                ::cachette::__private::invalidate_all(&#site_ref).await
            }

            #[doc = #doc_uncached]
            #vis #public_sig {
                #call.await
            }
        })
    } else {
        let doc_mod = format!("Companions of the cached function [`{name_str}`](fn@{name_str}).");
        Ok(quote! {
            #site_item
            #wrapper

            #[doc = #doc_mod]
            #[allow(unused_imports, clippy::module_name_repetitions)]
            #vis mod #name {
                use super::*;

                /// Removes the cached result of one call.
                pub async fn invalidate #generics (#(#key_params),*) #where_clause {
                    ::cachette::__private::invalidate(&super::#site, #key_expr).await
                }

                /// Removes the cached results of every call, on every tier and node.
                pub async fn invalidate_all() {
                    ::cachette::__private::invalidate_all(&super::#site).await
                }

                /// Calls the function without the cache.
                pub async fn uncached #generics (#inputs) #output #where_clause {
                    super::#uncached(#(#call_args),*).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let lit = LitStr::new("user:{id}:{ lang }", Span::call_site());
        assert_eq!(placeholders(&lit).unwrap(), vec!["id", "lang"]);
        assert_eq!(template_pattern("user:{id}:*"), "user:*:\\*");
        assert!(placeholders(&LitStr::new("user:{id", Span::call_site())).is_err());
    }
}
