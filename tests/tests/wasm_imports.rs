//! Every built component imports only what `wit/` allows, exports Spin's HTTP handler,
//! stays under 2 MiB (DESIGN §1, §7) and within its size budget (issue 11: keep them from
//! growing).
//!
//! Reads the components from `target/wasm32-wasip2/wasm/` (the `wasm` profile); build them first
//! with `scripts/build-wasm`. Needs neither Redis nor PostgreSQL.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use wit_component::{ComponentEncoder, DecodedWasm, StringEncoding};
use wit_parser::{LiftLowerAbi, ManglingAndAbi, Resolve, WorldId, WorldKey};

const COMPONENTS: [&str; 5] = ["inventory", "cart", "pricing", "checkout", "ops"];

/// DESIGN §7: each component's .wasm under 2 MiB as built (`scripts/build-wasm`).
const MAX_WASM_BYTES: usize = 2 * 1024 * 1024;

/// Issue 11 asks that the components do not grow: each .wasm stays within this many bytes,
/// 1.2% above the largest once a purchase's Redis steps ran as chains of scripts (1369347
/// bytes, 2026-12-03: 10.7 KB for the chain runner and its two uses, an order's last steps
/// and a payment's lock with PAYMENT_PENDING, which take a purchase from 18 script calls
/// to 14; on a Spin host each is a network round trip, DESIGN §2). Before that: 1365000,
/// 1.2% above the largest once `openapi.json` went in without its indentation (1348182
/// bytes, 2026-12-02; the indented document had grown with the statuses every route can
/// answer, to 1396679 bytes with a retry answering its begun session). Before that: 1400000,
/// 1.2% above the largest on 2026-12-02 (1384106 bytes). A JSON body's own visitor (a
/// name given twice is refused), a request waiting for another's ruleset republish, and
/// the refusal of a header given twice took them past the 1380000 set on 2026-12-01, 0.8%
/// above the 1368925 bytes reached once the Lua scripts' comment lines stayed out; 1420000
/// for the day before that, when they reached 1401120; 1380000 until then, 3% above
/// 2026-11-30's 1337445. It is the one place the budget is written (`scripts/bench
/// --wasm` reads it from here). Raise it only on purpose, in the commit that needs it,
/// and say there what grew and why (BENCHMARKS.md, "Wasm size and cold start", says how
/// each growth was found).
const WASM_BUDGET_BYTES: usize = 1_386_000;

/// The world of `wit/` that every component must target.
const WORLD: &str = "component";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

fn component_path(name: &str) -> PathBuf {
    target_dir()
        .join("wasm32-wasip2/wasm")
        .join(format!("{name}_component.wasm"))
}

fn read_component(name: &str) -> Vec<u8> {
    let path = component_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the {name} component at {}: {e}; run scripts/build-wasm first",
            path.display()
        )
    })
}

/// The world of `wit/`, with the names of its imports and exports as a component
/// spells them (`wasi:cli/environment@0.2.6`).
struct Allowed {
    /// `wit/` parsed, deps included.
    resolve: Resolve,
    /// The world `component`.
    world: WorldId,
    imports: BTreeSet<String>,
    exports: BTreeSet<String>,
}

impl Allowed {
    fn from_wit_dir() -> Self {
        let dir = workspace_root().join("wit");
        let mut resolve = Resolve::default();
        let (package, _) = resolve
            .push_dir(&dir)
            .unwrap_or_else(|e| panic!("{} does not parse: {e:#}", dir.display()));
        let world = resolve
            .select_world(&[package], Some(WORLD))
            .unwrap_or_else(|e| panic!("{} has no world {WORLD:?}: {e:#}", dir.display()));
        let imports = names(&resolve, resolve.worlds[world].imports.keys());
        let exports = names(&resolve, resolve.worlds[world].exports.keys());
        Self {
            resolve,
            world,
            imports,
            exports,
        }
    }

    /// Why `wasm` is refused, or nothing if it conforms: no import outside the world,
    /// and exactly the world's exports. Names carry versions, so an import of another
    /// version of an allowed interface is refused too.
    fn refusals(&self, wasm: &[u8]) -> Vec<String> {
        let (imports, exports) = match wit_component::decode(wasm) {
            Ok(DecodedWasm::Component(resolve, world)) => (
                names(&resolve, resolve.worlds[world].imports.keys()),
                names(&resolve, resolve.worlds[world].exports.keys()),
            ),
            Ok(DecodedWasm::WitPackage(..)) => return vec!["is a WIT package, not a component".into()],
            Err(e) => return vec![format!("does not decode as a component: {e:#}")],
        };
        let mut refusals: Vec<String> = imports
            .difference(&self.imports)
            .map(|import| format!("imports {import}, which wit/world.wit does not allow"))
            .collect();
        if exports != self.exports {
            refusals.push(format!(
                "exports {exports:?}, but wit/world.wit exports {:?}",
                self.exports
            ));
        }
        refusals
    }
}

fn names<'a>(resolve: &Resolve, keys: impl Iterator<Item = &'a WorldKey>) -> BTreeSet<String> {
    keys.map(|key| resolve.name_world_key(key)).collect()
}

/// A component that imports and exports everything `world` names, with no code behind
/// it: what any guest targeting `world` could look like.
fn synthetic_component(resolve: &Resolve, world: WorldId) -> Vec<u8> {
    let mangling = ManglingAndAbi::Legacy(LiftLowerAbi::Sync);
    let mut module = wit_component::dummy_module(resolve, world, mangling);
    wit_component::embed_component_metadata(&mut module, resolve, world, StringEncoding::UTF8)
        .expect("the component type embeds");
    ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .expect("the synthetic component encodes")
}

#[test]
fn every_component_imports_only_what_the_wit_world_allows() {
    let allowed = Allowed::from_wit_dir();
    // An empty world would refuse everything; one without Spin's data interfaces would
    // be a different product: either way the test would not be checking what it says.
    for needed in [
        "fermyon:spin/redis@2.0.0",
        "spin:postgres/postgres@4.0.0",
        "fermyon:spin/variables@2.0.0",
    ] {
        assert!(allowed.imports.contains(needed), "wit/world.wit lacks {needed}");
    }
    assert_eq!(
        allowed.exports,
        BTreeSet::from(["wasi:http/incoming-handler@0.2.0".to_owned()]),
    );

    let failures: Vec<String> = COMPONENTS
        .iter()
        .flat_map(|name| {
            let wasm = read_component(name);
            allowed
                .refusals(&wasm)
                .into_iter()
                .map(move |refusal| format!("{name}: {refusal}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "components reach outside wit/world.wit:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn every_component_stays_within_its_size_budget() {
    let over: Vec<String> = COMPONENTS
        .iter()
        .filter_map(|name| {
            let size = read_component(name).len();
            (size > WASM_BUDGET_BYTES).then(|| format!("{name}: {size} bytes"))
        })
        .collect();
    assert!(
        over.is_empty(),
        "components over the size budget of {WASM_BUDGET_BYTES} bytes: {over:?}. Find what \
         grew before anything else (a dependency or one of its features, a table, formatting \
         machinery); if the growth is wanted, raise WASM_BUDGET_BYTES in \
         tests/tests/wasm_imports.rs in the same commit and say why there"
    );
}

#[test]
fn every_component_is_smaller_than_2_mib() {
    let too_big: Vec<String> = COMPONENTS
        .iter()
        .filter_map(|name| {
            let size = read_component(name).len();
            (size >= MAX_WASM_BYTES).then(|| format!("{name}: {size} bytes"))
        })
        .collect();
    assert!(
        too_big.is_empty(),
        "components at or over {MAX_WASM_BYTES} bytes: {too_big:?}"
    );
}

#[test]
fn the_import_check_refuses_a_component_that_reaches_for_raw_sockets() {
    let allowed = Allowed::from_wit_dir();
    let mut resolve = allowed.resolve.clone();
    // The allowed world plus one interface: the check must name exactly that one.
    let package = resolve
        .push_str(
            "outside.wit",
            "package test:outside;
             world outside {
               include spin-commerce:components/component;
               import wasi:sockets/tcp@0.2.6;
             }",
        )
        .expect("the test world parses");
    let outside = resolve
        .select_world(&[package], Some("outside"))
        .expect("the test world exists");

    let conforming = synthetic_component(&allowed.resolve, allowed.world);
    assert_eq!(
        allowed.refusals(&conforming),
        Vec::<String>::new(),
        "a component importing exactly the world is accepted"
    );

    let refusals = allowed.refusals(&synthetic_component(&resolve, outside));
    assert!(
        refusals
            .iter()
            .any(|refusal| refusal.contains("imports wasi:sockets/tcp@0.2.6")),
        "a component importing wasi:sockets/tcp is refused, got {refusals:?}"
    );
}

#[test]
fn the_import_check_refuses_a_built_component_when_the_world_lacks_one_of_its_imports() {
    let mut allowed = Allowed::from_wit_dir();
    let wasm = read_component("inventory");
    assert!(allowed.refusals(&wasm).is_empty());

    allowed.imports.remove("fermyon:spin/redis@2.0.0");
    assert_eq!(
        allowed.refusals(&wasm),
        vec!["imports fermyon:spin/redis@2.0.0, which wit/world.wit does not allow".to_owned()],
    );
}
