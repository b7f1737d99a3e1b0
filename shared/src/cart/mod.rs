//! The cart store: anonymous carts (`cart:session:{S}`) and customers' carts
//! (`cart:customer:{C}`), each one Redis hash changed only by scripts, so concurrent
//! changes never lose an update. Every change is one script call that bumps the cart's
//! version, slides its time to live, and returns the whole cart.

pub mod routes;

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::App;
use crate::bundle::Choices;
use crate::clock::rfc3339_millis;
use crate::error::{Error, ErrorCode, Result};
use crate::http::{field, object, str_field};
use crate::ids::{BundleId, CartId, CustomerId, LineId, Quantity, SetId, VariantId, random_hex_128};
use crate::keys::Keys;
use crate::ports::{Redis, RedisArg, RedisReply};
use crate::pricing::money::Currency;
use crate::script::{Script, lua, tag, unexpected};
use crate::settings::Settings;

static CREATE: Script = Script::new(lua!("cart/cart.lua", "cart/create.lua"));
static GET: Script = Script::new(lua!("cart/cart.lua", "cart/get.lua"));
static MUTATE: Script = Script::new(lua!("cart/cart.lua", "cart/mutate.lua"));
static MERGE_CLAIM: Script = Script::new(lua!("cart/cart.lua", "cart/merge_claim.lua"));
static MERGE_APPLY: Script = Script::new(lua!("cart/cart.lua", "cart/merge_apply.lua"));
static MERGE_FINISH: Script = Script::new(lua!("cart/merge_finish.lua"));
static MERGE_RELEASE: Script = Script::new(lua!("cart/merge_release.lua"));
static LINES: Script = Script::new(lua!("cart/lines.lua"));

/// How long the tombstone of a merged anonymous cart answers retries: one day.
const TOMBSTONE_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// Which cart: an anonymous one by its id, or a customer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartRef {
    /// An anonymous cart.
    Session(CartId),
    /// A signed-in customer's cart.
    Customer(CustomerId),
}

/// What a line holds: one variant, or a bundle with its chosen variants per set. Stored in
/// the cart as its definition, `{"variantId"}` or `{"bundleId", "choices": {set: [variant
/// ids]}}` (JSON), which is also how clients see it and what checkout freezes; read back
/// once, into this type, for pricing and checkout alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Definition", into = "Definition")]
pub enum LineItem {
    /// A variant.
    Variant(VariantId),
    /// A bundle and its choices.
    Bundle(BundleId, Choices),
}

impl LineItem {
    /// The line's id: a digest of what it holds, so the same variant (or the same bundle
    /// with the same choices) is always the same line, in every cart; this is what lets a
    /// merge add quantities per line.
    pub fn line_id(&self) -> LineId {
        let canonical = match self {
            LineItem::Variant(v) => format!("v|{v}"),
            LineItem::Bundle(b, choices) => {
                let sets: Vec<String> = choices
                    .iter()
                    .map(|(set, vs)| {
                        let vs: Vec<&str> = vs.iter().map(VariantId::as_str).collect();
                        format!("{set}={}", vs.join(","))
                    })
                    .collect();
                format!("b|{b}|{}", sets.join(";"))
            }
        };
        let digest = sha1_smol::Sha1::from(canonical).digest().to_string();
        LineId::parse(&format!("l{}", &digest[..20])).expect("hex digest is a valid id")
    }

    /// The variants the line takes from stock, once each per unit of the line: the variant,
    /// or the bundle's chosen parts.
    pub fn variants(&self) -> impl Iterator<Item = &VariantId> {
        let (variant, parts) = match self {
            LineItem::Variant(v) => (Some(v), None),
            LineItem::Bundle(_, choices) => (None, Some(choices.values().flatten())),
        };
        variant.into_iter().chain(parts.into_iter().flatten())
    }

    /// The JSON stored for the line and shown to clients (without id and quantity).
    fn definition(&self) -> String {
        serde_json::to_string(self).expect("a line item serializes")
    }
}

/// A [`LineItem`] as stored: exactly one of the variant or the bundle with its choices.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Definition {
    #[serde(skip_serializing_if = "Option::is_none")]
    variant_id: Option<VariantId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle_id: Option<BundleId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    choices: Option<Choices>,
}

impl TryFrom<Definition> for LineItem {
    type Error = &'static str;

    fn try_from(d: Definition) -> std::result::Result<Self, Self::Error> {
        match (d.variant_id, d.bundle_id, d.choices) {
            (Some(variant), None, None) => Ok(LineItem::Variant(variant)),
            (None, Some(bundle), Some(choices)) => Ok(LineItem::Bundle(bundle, choices)),
            _ => Err("a line holds a variantId, or a bundleId with its choices"),
        }
    }
}

impl From<LineItem> for Definition {
    fn from(item: LineItem) -> Self {
        let (variant_id, bundle_id, choices) = match item {
            LineItem::Variant(v) => (Some(v), None, None),
            LineItem::Bundle(b, choices) => (None, Some(b), Some(choices)),
        };
        Definition {
            variant_id,
            bundle_id,
            choices,
        }
    }
}

/// Parses one line to add: `{variantId, quantity}` or `{bundleId, choices, quantity}`.
pub fn parse_line(body: &Value) -> Result<(LineItem, Quantity)> {
    let body = object(body)?;
    let quantity = Quantity::from_json(field(body, "quantity")?)?;
    let item = match (body.get("variantId"), body.get("bundleId")) {
        (Some(_), None) => LineItem::Variant(VariantId::parse(str_field(body, "variantId")?)?),
        (None, Some(_)) => {
            let bundle = BundleId::parse(str_field(body, "bundleId")?)?;
            LineItem::Bundle(bundle, parse_choices(field(body, "choices")?)?)
        }
        _ => {
            return Err(Error::bad_request(
                ErrorCode::InvalidLine,
                "a line names either a variantId or a bundleId with its choices",
            ));
        }
    };
    Ok((item, quantity))
}

/// Most sets, and variants per set, a bundle line may name.
const MAX_CHOICES: usize = 100;

fn parse_choices(value: &Value) -> Result<Choices> {
    let bad = |message: &str| Error::bad_request(ErrorCode::InvalidChoices, message);
    let sets = value
        .as_object()
        .ok_or_else(|| bad("choices must be an object of set id → [variant ids]"))?;
    if sets.is_empty() || sets.len() > MAX_CHOICES {
        return Err(bad("choices must name 1 to 100 sets"));
    }
    let mut choices = Choices::new();
    for (set, variants) in sets {
        let set = SetId::parse(set)?;
        let variants = variants
            .as_array()
            .filter(|v| !v.is_empty() && v.len() <= MAX_CHOICES)
            .ok_or_else(|| bad("each set's choice must be an array of 1 to 100 variant ids"))?;
        let mut chosen = BTreeSet::new();
        for v in variants {
            let id = v.as_str().ok_or_else(|| bad("variant ids must be strings"))?;
            if !chosen.insert(VariantId::parse(id)?) {
                return Err(Error::Unprocessable {
                    code: ErrorCode::InvalidBundleChoice,
                    message: format!("variant {id} is chosen twice in set {set}"),
                    details: json!({ "setId": set.as_str(), "reason": "duplicate" }),
                });
            }
        }
        choices.insert(set, chosen.into_iter().collect());
    }
    Ok(choices)
}

/// A cart as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CartView {
    /// The anonymous cart's id (absent for a customer's cart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart_id: Option<String>,
    /// The customer (customers' carts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// ISO 4217 currency of the cart.
    pub currency: Currency,
    /// Bumped by every change; send it back in `If-Match` for optimistic concurrency.
    pub version: i64,
    /// The lines, in the order they were first added.
    pub lines: Vec<CartLine>,
    /// When the cart expires unless changed again (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Lines a merge could not add because the cart was full.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped_line_ids: Vec<String>,
    /// Lines a merge added only up to `cart_max_line_quantity` (the rest of their units
    /// were not added).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capped_line_ids: Vec<String>,
}

/// One line read back from a cart: what it holds and how many, as clients see it
/// (`lineId`, the item's definition, `quantity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CartLine {
    /// The line.
    pub line_id: LineId,
    /// What it holds.
    #[serde(flatten)]
    pub item: LineItem,
    /// Units.
    pub quantity: u32,
}

/// The cart store.
pub struct Carts<'a, R> {
    redis: &'a R,
    keys: &'a Keys,
    settings: &'a Settings,
}

/// Optimistic concurrency: the version the client last saw (`If-Match`), if any.
pub type Expected = Option<i64>;

impl<'a, R: Redis> Carts<'a, R> {
    /// The store.
    pub fn new(redis: &'a R, keys: &'a Keys, settings: &'a Settings) -> Self {
        Self {
            redis,
            keys,
            settings,
        }
    }

    /// The cart store of an app.
    pub fn of<S, H>(app: &'a App<R, S, H>) -> Self {
        Self::new(&app.redis, &app.keys, &app.settings)
    }

    /// The cart's key.
    pub fn key(&self, cart: &CartRef) -> String {
        match cart {
            CartRef::Session(id) => self.keys.cart_session(id),
            CartRef::Customer(id) => self.keys.cart_customer(id),
        }
    }

    /// The key of the cart's checkout lock (same hash slot as the cart).
    pub fn lock_key(&self, cart: &CartRef) -> String {
        match cart {
            CartRef::Session(id) => self.keys.checkout_lock_session(id),
            CartRef::Customer(id) => self.keys.checkout_lock_customer(id),
        }
    }

    /// The time to live every change of a cart slides it to (`cart_ttl_seconds`), ms.
    pub(crate) fn ttl_ms(&self) -> i64 {
        i64::from(self.settings.cart_ttl_seconds) * 1000
    }

    /// Creates an empty anonymous cart with an unguessable id (128 random bits).
    pub async fn create(&self, currency: Currency) -> Result<CartView> {
        for _ in 0..3 {
            let id = CartId::parse(&random_hex_128()?)?;
            let cart = CartRef::Session(id);
            let reply = self
                .run(
                    &CREATE,
                    &cart,
                    vec![currency.as_str().into(), RedisArg::Int(self.ttl_ms())],
                )
                .await?;
            if tag(&reply) == "OK" {
                return decode(&cart, &reply);
            }
        }
        Err(Error::Internal("could not draw an unused cart id".into()))
    }

    /// Reads a cart, its lines decoded (what pricing and checkout read too). A customer
    /// without a cart has an empty one (version 0).
    pub async fn get(&self, cart: &CartRef) -> Result<CartView> {
        self.read(cart, None).await
    }

    /// [`Self::get`]; with `merged_from`, an anonymous cart merged into this customer's
    /// cart, the view also names the lines that merge dropped and capped.
    async fn read(&self, cart: &CartRef, merged_from: Option<&CartId>) -> Result<CartView> {
        let args = merged_from.map(|from| from.as_str().into()).into_iter().collect();
        let reply = self.run(&GET, cart, args).await?;
        match (tag(&reply), cart) {
            ("OK", _) => decode(cart, &reply),
            ("NOT_FOUND", CartRef::Customer(customer)) => Ok(CartView {
                cart_id: None,
                customer_id: Some(customer.to_string()),
                currency: self.settings.default_currency,
                version: 0,
                lines: Vec::new(),
                expires_at: None,
                dropped_line_ids: Vec::new(),
                capped_line_ids: Vec::new(),
            }),
            ("NOT_FOUND" | "MERGED", CartRef::Session(id)) => Err(cart_not_found(id)),
            _ => Err(unexpected(&reply)),
        }
    }

    /// A cart's currency and lines, which is what pricing reads: one script that answers
    /// the cart's fields as one text (`lines.lua`), since a quote needs neither the cart's
    /// expiry nor its lock, and ~65 replies of a 20-line cart cost more to parse than the
    /// script costs to join them. A customer without a cart has an empty one in the
    /// default currency.
    pub async fn lines(&self, cart: &CartRef) -> Result<(Currency, Vec<CartLine>)> {
        let (currency, lines, _) = self.read_lines(cart, None).await?;
        Ok((currency, lines))
    }

    /// [`Self::lines`], and in the same script (so one round trip, on a standalone Redis
    /// only: the keys are of other slots) what the keys `pointers` hold as integers (0 for
    /// none) and the Redis clock (epoch ms): `[first, second, now]`.
    pub async fn lines_and_pointers(
        &self,
        cart: &CartRef,
        pointers: [&str; 2],
    ) -> Result<(Currency, Vec<CartLine>, [i64; 3])> {
        let (currency, lines, read) = self.read_lines(cart, Some(pointers)).await?;
        let read = read.ok_or_else(|| Error::Internal("lines.lua read no pointers".into()))?;
        Ok((currency, lines, read))
    }

    async fn read_lines(
        &self,
        cart: &CartRef,
        pointers: Option<[&str; 2]>,
    ) -> Result<(Currency, Vec<CartLine>, Option<[i64; 3]>)> {
        let key = self.key(cart);
        let mut keys = vec![key.as_str()];
        keys.extend(pointers.iter().flatten());
        let reply = LINES.run(self.redis, &keys, Vec::new()).await?;
        let text = match reply.as_slice() {
            [RedisReply::Bytes(text)] => std::str::from_utf8(text).ok(),
            _ => None,
        }
        .ok_or_else(|| unexpected(&reply))?;
        let mut lines = text.split('\n').filter(|_| !text.is_empty());
        let read = match pointers {
            None => None,
            Some(_) => {
                let mut int = || {
                    lines
                        .next()
                        .and_then(|line| line.parse().ok())
                        .ok_or_else(|| unexpected(&reply))
                };
                Some([int()?, int()?, int()?])
            }
        };
        let mut fields = HashMap::with_capacity(text.matches('\n').count() / 2 + 1);
        while let Some(field) = lines.next() {
            fields.insert(field, lines.next().ok_or_else(|| unexpected(&reply))?);
        }
        let (currency, lines) = match cart {
            CartRef::Session(id) if fields.is_empty() || fields.contains_key("merged") => {
                return Err(cart_not_found(id));
            }
            CartRef::Customer(_) if fields.is_empty() => (self.settings.default_currency, Vec::new()),
            _ => (currency_of(&fields)?, lines_of(&fields, &reply)?),
        };
        Ok((currency, lines, read))
    }

    /// Adds `quantity` of an item: to its line if the cart has it, else as a new line.
    /// Customers' carts are created on their first item.
    pub async fn add(
        &self,
        cart: &CartRef,
        item: &LineItem,
        quantity: Quantity,
        expected: Expected,
    ) -> Result<CartView> {
        self.mutate(
            cart,
            "add",
            &item.line_id(),
            &item.definition(),
            quantity.get(),
            expected,
        )
        .await
    }

    /// Sets a line's quantity; 0 removes the line.
    pub async fn set_quantity(
        &self,
        cart: &CartRef,
        line: &LineId,
        quantity: u32,
        expected: Expected,
    ) -> Result<CartView> {
        self.mutate(cart, "set", line, "", quantity, expected).await
    }

    async fn mutate(
        &self,
        cart: &CartRef,
        op: &str,
        line: &LineId,
        definition: &str,
        quantity: u32,
        expected: Expected,
    ) -> Result<CartView> {
        let customer = match cart {
            CartRef::Customer(c) => c.as_str(),
            CartRef::Session(_) => "",
        };
        let args = vec![
            op.into(),
            line.as_str().into(),
            definition.into(),
            RedisArg::Int(quantity.into()),
            RedisArg::Int(self.settings.cart_max_lines.into()),
            RedisArg::Int(self.settings.cart_max_line_quantity.into()),
            RedisArg::Int(self.ttl_ms()),
            expected.map(|v| v.to_string()).unwrap_or_default().into(),
            if customer.is_empty() { "0" } else { "1" }.into(),
            self.settings.default_currency.as_str().into(),
            customer.into(),
        ];
        let reply = self.run(&MUTATE, cart, args).await?;
        match tag(&reply) {
            "OK" => decode(cart, &reply),
            "NOT_FOUND" => Err(match cart {
                CartRef::Session(id) => cart_not_found(id),
                CartRef::Customer(_) => {
                    Error::not_found(ErrorCode::LineNotFound, format!("the cart has no line {line}"))
                }
            }),
            "NO_LINE" => Err(Error::not_found(
                ErrorCode::LineNotFound,
                format!("the cart has no line {line}"),
            )),
            "MERGED" => Err(cart_merged()),
            "LOCKED" => Err(cart_locked(&reply)),
            "VERSION" => Err(Error::PreconditionFailed(format!(
                "the cart is at version {}, not the one in If-Match",
                reply.get(1).and_then(RedisReply::as_int).unwrap_or(0)
            ))),
            "LIMIT" => {
                let what = reply
                    .get(1)
                    .and_then(RedisReply::as_text)
                    .unwrap_or("")
                    .to_owned();
                let max = reply.get(2).and_then(RedisReply::as_int).unwrap_or(0);
                let message = if what == "lines" {
                    format!("a cart holds at most {max} lines")
                } else {
                    format!("a line holds at most {max} units")
                };
                Err(Error::Unprocessable {
                    code: ErrorCode::CartLimit,
                    message,
                    details: json!({ "limit": what, "max": max }),
                })
            }
            _ => Err(unexpected(&reply)),
        }
    }

    /// Merges an anonymous cart into the customer's on sign-in: its lines are added to the
    /// customer's cart, quantities summed per line, and it is removed. Three scripts, each
    /// on one cart (the two may live in different Cluster slots): claim (freeze and read),
    /// apply (once, by a marker in the customer's cart), finish (tombstone). Any retry or
    /// race resumes where it finds the carts, and never adds a line twice.
    pub async fn merge(&self, from: &CartId, customer: &CustomerId, expected: Expected) -> Result<CartView> {
        let anonymous = CartRef::Session(from.clone());
        let target = CartRef::Customer(customer.clone());
        let lease = i64::try_from(self.settings.request_timeout_ms).unwrap_or(i64::MAX);
        let claim = self
            .run(
                &MERGE_CLAIM,
                &anonymous,
                vec![customer.as_str().into(), RedisArg::Int(lease)],
            )
            .await?;
        match tag(&claim) {
            "CLAIMED" => {}
            "LOCKED" => return Err(cart_locked(&claim)),
            // A retry of a finished merge answers as the merge did.
            "DONE" => return self.read(&target, Some(from)).await,
            "NOT_FOUND" => return Err(cart_not_found(from)),
            "ELSEWHERE" => {
                return Err(Error::Conflict {
                    code: ErrorCode::CartMerged,
                    message: "the cart is being merged into another customer's cart".into(),
                    details: Value::Null,
                });
            }
            _ => return Err(unexpected(&claim)),
        }
        let claimed = decode(&anonymous, &claim)?;
        let mut args = vec![
            from.as_str().into(),
            claimed.currency.as_str().into(),
            RedisArg::Int(self.ttl_ms()),
            RedisArg::Int(self.settings.cart_max_lines.into()),
            RedisArg::Int(self.settings.cart_max_line_quantity.into()),
            customer.as_str().into(),
            expected.map(|v| v.to_string()).unwrap_or_default().into(),
        ];
        for line in decode_lines(&claim)? {
            args.push(line.line_id.as_str().into());
            args.push(line.item.definition().into());
            args.push(RedisArg::Int(line.quantity.into()));
        }
        let applied = self.run(&MERGE_APPLY, &target, args).await?;
        let refused = match tag(&applied) {
            "OK" => None,
            "LOCKED" => Some(cart_locked(&applied)),
            "VERSION" => Some(Error::PreconditionFailed(format!(
                "the customer's cart is at version {}, not the one in If-Match",
                applied.get(1).and_then(RedisReply::as_int).unwrap_or(0)
            ))),
            "CURRENCY" => Some(Error::Unprocessable {
                code: ErrorCode::CurrencyMismatch,
                message: format!(
                    "the cart is in {}, the customer's cart in {}",
                    claimed.currency,
                    applied.get(1).and_then(RedisReply::as_text).unwrap_or("?")
                ),
                details: Value::Null,
            }),
            _ => return Err(unexpected(&applied)),
        };
        if let Some(refused) = refused {
            // Nothing was added: the anonymous cart is unfrozen, not left claimed.
            self.run(&MERGE_RELEASE, &anonymous, vec![customer.as_str().into()])
                .await?;
            return Err(refused);
        }
        let view = decode(&target, &applied)?;
        let finished = self
            .run(
                &MERGE_FINISH,
                &anonymous,
                vec![customer.as_str().into(), RedisArg::Int(TOMBSTONE_TTL_MS)],
            )
            .await?;
        if tag(&finished) != "OK" {
            return Err(unexpected(&finished));
        }
        Ok(view)
    }

    /// Runs a cart script with the cart and its checkout lock as keys (one hash slot).
    async fn run(&self, script: &Script, cart: &CartRef, args: Vec<RedisArg>) -> Result<Vec<RedisReply>> {
        let (key, lock) = (self.key(cart), self.lock_key(cart));
        script
            .run(self.redis, &[&key, &lock], args)
            .await
            .map_err(Error::from)
    }
}

/// The 409 for a cart merged into a customer's cart, which takes no more changes and no
/// checkout.
pub(crate) fn cart_merged() -> Error {
    Error::Conflict {
        code: ErrorCode::CartMerged,
        message: "the cart has been merged into a customer's cart".into(),
        details: Value::Null,
    }
}

/// The cart is held by a live checkout: changes wait until it ends.
fn cart_locked(reply: &[RedisReply]) -> Error {
    let session = reply
        .get(1)
        .and_then(RedisReply::as_text)
        .unwrap_or("")
        .to_owned();
    Error::Conflict {
        code: ErrorCode::CartLocked,
        message: format!("the cart is being checked out by session {session}"),
        details: serde_json::json!({ "sessionId": session }),
    }
}

pub(crate) fn cart_not_found(id: &CartId) -> Error {
    Error::not_found(
        ErrorCode::CartNotFound,
        format!("no cart {id} (it may have expired or been merged)"),
    )
}

/// A cart script's snapshot reply `{status, now, pttl, #dropped, dropped..., #capped,
/// capped..., field, value...}`, its texts borrowed from the reply.
struct Snapshot<'r> {
    now_ms: i64,
    pttl_ms: i64,
    dropped: Vec<String>,
    capped: Vec<String>,
    fields: HashMap<&'r str, &'r str>,
}

fn snapshot_parts(reply: &[RedisReply]) -> Result<Snapshot<'_>> {
    let int = |i: usize| {
        reply
            .get(i)
            .and_then(RedisReply::as_int)
            .ok_or_else(|| unexpected(reply))
    };
    // A count, then that many line ids, from `at`; the ids and where the next part starts.
    let counted = |at: usize| -> Result<(Vec<String>, usize)> {
        let count = usize::try_from(int(at)?).map_err(|_| unexpected(reply))?;
        let ids = reply
            .get(at + 1..at + 1 + count)
            .ok_or_else(|| unexpected(reply))?
            .iter()
            .map(|id| {
                RedisReply::as_text(id)
                    .map(str::to_owned)
                    .ok_or_else(|| unexpected(reply))
            })
            .collect::<Result<_>>()?;
        Ok((ids, at + 1 + count))
    };
    let (dropped, next) = counted(3)?;
    let (capped, next) = counted(next)?;
    Ok(Snapshot {
        now_ms: int(1)?,
        pttl_ms: int(2)?,
        dropped,
        capped,
        fields: field_pairs(&reply[next..], reply)?,
    })
}

/// The hash fields of `pairs` (field, value, field, value…, as `HGETALL` answers), part of
/// `reply`.
fn field_pairs<'r>(pairs: &'r [RedisReply], reply: &[RedisReply]) -> Result<HashMap<&'r str, &'r str>> {
    let text = |r| RedisReply::as_text(r).ok_or_else(|| unexpected(reply));
    pairs
        .chunks(2)
        .map(|kv| match kv {
            [k, v] => Ok((text(k)?, text(v)?)),
            _ => Err(unexpected(reply)),
        })
        .collect()
}

/// The lines of a cart script's snapshot reply, in the order they were added.
pub(crate) fn decode_lines(reply: &[RedisReply]) -> Result<Vec<CartLine>> {
    lines_of(&snapshot_parts(reply)?.fields, reply)
}

/// The lines among a snapshot's fields (`q:`, `d:` and `o:` of each line: quantity,
/// definition, position), in the order they were added.
fn lines_of(fields: &HashMap<&str, &str>, reply: &[RedisReply]) -> Result<Vec<CartLine>> {
    let mut lines: Vec<(i64, CartLine)> = Vec::with_capacity(fields.len() / 3);
    let mut field = String::new();
    for (name, quantity) in fields {
        let Some(line) = name.strip_prefix("q:") else {
            continue;
        };
        let mut of_line = |prefix: &str| {
            field.clear();
            field.push_str(prefix);
            field.push_str(line);
            fields.get(field.as_str()).copied()
        };
        let item = of_line("d:")
            .and_then(|d| serde_json::from_str(d).ok())
            .ok_or_else(|| unexpected(reply))?;
        let position = of_line("o:").and_then(|o| o.parse().ok()).unwrap_or(0);
        lines.push((
            position,
            CartLine {
                line_id: LineId::parse(line).map_err(|_| unexpected(reply))?,
                item,
                quantity: quantity.parse().map_err(|_| unexpected(reply))?,
            },
        ));
    }
    lines.sort_by_key(|(position, _)| *position);
    Ok(lines.into_iter().map(|(_, line)| line).collect())
}

/// Which life of its key a cart snapshot is: when that cart was created (epoch ms, Redis
/// clock; 0 for a cart without it). A customer's cart lost with Redis and built again
/// under the same key is another one. And when its version was written (`written`; `None`
/// for a cart from before it was noted).
pub(crate) fn generation_and_written(reply: &[RedisReply]) -> Result<(i64, Option<String>)> {
    let parts = snapshot_parts(reply)?;
    let generation = parts
        .fields
        .get("created")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((generation, parts.fields.get("written").map(|w| (*w).to_owned())))
}

/// The cart of a cart script's snapshot reply, its lines decoded.
pub(crate) fn decode(cart: &CartRef, reply: &[RedisReply]) -> Result<CartView> {
    let Snapshot {
        now_ms: now,
        pttl_ms: pttl,
        dropped: dropped_line_ids,
        capped: capped_line_ids,
        fields,
    } = snapshot_parts(reply)?;
    Ok(CartView {
        cart_id: match cart {
            CartRef::Session(id) => Some(id.to_string()),
            CartRef::Customer(_) => None,
        },
        customer_id: match cart {
            CartRef::Customer(id) => Some(id.to_string()),
            CartRef::Session(_) => None,
        },
        currency: currency_of(&fields)?,
        version: fields.get("version").and_then(|v| v.parse().ok()).unwrap_or(0),
        lines: lines_of(&fields, reply)?,
        expires_at: (pttl > 0).then(|| rfc3339_millis(now + pttl)),
        dropped_line_ids,
        capped_line_ids,
    })
}

/// The currency a cart's fields name.
fn currency_of(fields: &HashMap<&str, &str>) -> Result<Currency> {
    fields
        .get("currency")
        .and_then(|c| Currency::parse(c).ok())
        .ok_or_else(|| Error::Internal("a cart without a valid currency".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<T: TryFrom<String>>(raw: &str) -> T {
        T::try_from(raw.to_owned()).unwrap_or_else(|_| panic!("{raw} is an id"))
    }

    #[test]
    fn a_line_is_stored_as_its_definition_and_read_back_as_the_same_item() {
        let variant = LineItem::Variant(id("var-1"));
        let choices = Choices::from([(id("size"), vec![id("var-2"), id("var-3")])]);
        let bundle = LineItem::Bundle(id("kit"), choices);
        // The stored forms of carts written before the type existed.
        let stored = [
            (&variant, r#"{"variantId":"var-1"}"#),
            (
                &bundle,
                r#"{"bundleId":"kit","choices":{"size":["var-2","var-3"]}}"#,
            ),
        ];
        for (item, json) in stored {
            assert_eq!(item.definition(), json);
            assert_eq!(&serde_json::from_str::<LineItem>(json).unwrap(), item);
        }
        assert_eq!(
            bundle.variants().map(VariantId::as_str).collect::<Vec<_>>(),
            ["var-2", "var-3"]
        );
    }

    #[test]
    fn a_stored_definition_that_is_not_one_item_of_valid_ids_is_refused() {
        for json in [
            r#"{}"#,
            r#"{"variantId":"var-1","bundleId":"kit"}"#,
            r#"{"bundleId":"kit"}"#,
            r#"{"variantId":"var 1"}"#,
            r#"{"bundleId":"kit","choices":{"size":["var:2"]}}"#,
        ] {
            assert!(serde_json::from_str::<LineItem>(json).is_err(), "{json}");
        }
    }
}
