//! `#[cache_page]`: cache an axum handler's responses with the layer's
//! machinery.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{ItemFn, LitStr, ReturnType, Type, spanned::Spanned};

use crate::options::{Options, millis, option_u64};

const OPTIONS: &[&str] = &["ttl", "cache", "key_prefix", "vary", "tags", "unless"];

fn contains_impl_trait(ty: &Type) -> bool {
    match ty {
        Type::ImplTrait(_) => true,
        Type::Paren(p) => contains_impl_trait(&p.elem),
        Type::Group(g) => contains_impl_trait(&g.elem),
        _ => false,
    }
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let options = Options::parse(args, "cache_page", OPTIONS)?;
    let function: ItemFn = syn::parse2(item)?;
    if function.sig.asyncness.is_none() {
        return Err(syn::Error::new(
            function.sig.fn_token.span(),
            "#[cache_page] needs an `async fn` axum handler",
        ));
    }
    if let Some(receiver) = function.sig.receiver() {
        return Err(syn::Error::new(
            receiver.span(),
            "#[cache_page] handlers cannot take `self`",
        ));
    }
    let alias = options
        .string("cache")?
        .map_or_else(|| "default".to_owned(), |s| s.value());
    let ttl = option_u64(options.duration("ttl")?.map(millis));
    let key_prefix = match options.string("key_prefix")? {
        Some(prefix) => quote!(::core::option::Option::Some(#prefix)),
        None => quote!(::core::option::Option::None),
    };
    let vary: Vec<LitStr> = options.strings("vary")?;
    for header in &vary {
        let value = header.value();
        if value.is_empty()
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(syn::Error::new(
                header.span(),
                format!("`{value}` is not a header name"),
            ));
        }
    }
    let tags: Vec<LitStr> = options.strings("tags")?;
    let unless = match options.path("unless")? {
        Some(path) => {
            quote!(::core::option::Option::Some(#path as fn(&::cachette::__private::http::request::Parts) -> bool))
        }
        None => quote!(::core::option::Option::None),
    };

    let attrs = &function.attrs;
    let vis = &function.vis;
    let name = &function.sig.ident;
    let generics = &function.sig.generics;
    let where_clause = &function.sig.generics.where_clause;
    let inputs = &function.sig.inputs;
    let block = &function.block;
    let body = match &function.sig.output {
        ReturnType::Type(_, ty) if !contains_impl_trait(ty) => {
            quote!(::cachette::__private::typed::<#ty, _>(async move #block))
        }
        _ => quote!(async move #block),
    };
    let comma = if inputs.is_empty() {
        quote!()
    } else {
        quote!(,)
    };
    Ok(quote! {
        #(#attrs)*
        #vis async fn #name #generics (
            __cachette_method: ::cachette::__private::http::Method,
            __cachette_uri: ::cachette::__private::axum::extract::OriginalUri,
            __cachette_headers: ::cachette::__private::http::HeaderMap
            #comma #inputs
        ) -> ::cachette::__private::axum::response::Response #where_clause {
            static __CACHETTE_PAGE: ::cachette::__private::PageSite = ::cachette::__private::PageSite {
                alias: #alias,
                ttl_ms: #ttl,
                key_prefix: #key_prefix,
                vary: &[#(#vary),*],
                tags: &[#(#tags),*],
                unless: #unless,
                layer: ::cachette::__private::LayerSlot::new(),
            };
            ::cachette::__private::cache_page(
                &__CACHETTE_PAGE,
                __cachette_method,
                __cachette_uri,
                __cachette_headers,
                #body,
            )
            .await
        }
    })
}
