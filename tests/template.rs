//! The AWS shape, read from the files: the SAM template (`template.yaml`) has
//! the settings the cloud run depends on, `cfn-lint` accepts it, and the
//! sample events in `events/` are valid Lambda events for the functions.
//!
//! `cfn_lint_accepts_the_template` runs the binary named by
//! `SHOTLIST_CFN_LINT` (`scripts/install-pytools` prints its folder). Without
//! it the test fails under CI and is skipped elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use aws_lambda_events::event::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::{json, Map, Value};
use shotlist_shared::cloud::messages::{ChunkMessage, FinalizeMessage};
use shotlist_tests::FUNCTIONS;
use uuid::Uuid;

/// The HTTP API's routes and the function that serves each.
const ROUTES: [(&str, &str, &str); 6] = [
    ("POST", "/videos", "submit"),
    ("GET", "/videos/{id}", "status"),
    ("GET", "/videos/{id}/progress", "status"),
    ("GET", "/videos/{id}/{file}", "status"),
    ("POST", "/videos/{id}/finalize", "finalize"),
    ("POST", "/videos/{id}/force-finalize", "force-finalize"),
];
/// Environment variables whose values are secrets.
const SECRET_VARS: [&str; 4] = [
    "DATABASE_URL",
    "SUPABASE_JWT_SECRET",
    "GEMINI_API_KEYS",
    "REPLICATE_API_TOKENS",
];
const DYNAMIC_SECRET: &str = "{{resolve:secretsmanager:";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// YAML to JSON, with CloudFormation's short tags (`!Ref X`, `!GetAtt A.B`,
/// `!Sub ...`, `!If [...]`) turned into their long forms.
fn to_json(value: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n
                    .as_f64()
                    .expect("a YAML number is a float when not an integer"))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(mapping) => Value::Object(
            mapping
                .into_iter()
                .map(|(k, v)| match k {
                    Y::String(k) => (k, to_json(v)),
                    other => panic!("template.yaml: a mapping key that is not a string: {other:?}"),
                })
                .collect(),
        ),
        Y::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let inner = to_json(tagged.value);
            match (name, inner) {
                ("Ref", inner) => json!({ "Ref": inner }),
                ("Condition", inner) => json!({ "Condition": inner }),
                ("GetAtt", Value::String(s)) => {
                    let (resource, attribute) = s
                        .split_once('.')
                        .unwrap_or_else(|| panic!("template.yaml: !GetAtt {s} has no attribute"));
                    json!({ "Fn::GetAtt": [resource, attribute] })
                }
                (name, inner) => json!({ format!("Fn::{name}"): inner }),
            }
        }
    }
}

struct Template {
    text: String,
    doc: Value,
}

impl Template {
    fn load() -> Template {
        let path = root().join("template.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let yaml: serde_norway::Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("template.yaml is not YAML: {e}"));
        Template {
            text,
            doc: to_json(yaml),
        }
    }

    fn section(&self, name: &str) -> &Map<String, Value> {
        self.doc[name]
            .as_object()
            .unwrap_or_else(|| panic!("template.yaml has no {name} section"))
    }

    fn resource(&self, name: &str) -> &Value {
        self.section("Resources")
            .get(name)
            .unwrap_or_else(|| panic!("template.yaml has no resource {name}"))
    }

    fn resources_of_type<'a>(
        &'a self,
        ty: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.section("Resources")
            .iter()
            .filter(move |(_, r)| r["Type"] == ty)
    }

    /// The logical id of the function whose `BuildProperties.Binary` is `binary`.
    fn function_named(&self, binary: &str) -> (&String, &Value) {
        let found: Vec<_> = self
            .resources_of_type("AWS::Serverless::Function")
            .filter(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == binary)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one function builds the binary {binary}"
        );
        found[0]
    }

    /// A function property, falling back to `Globals.Function` as SAM does.
    fn function_property<'a>(&'a self, function: &'a Value, key: &str) -> &'a Value {
        match &function["Properties"][key] {
            Value::Null => &self.doc["Globals"]["Function"][key],
            own => own,
        }
    }

    /// The function's environment variables, the global ones merged in.
    fn environment(&self, function: &Value) -> Map<String, Value> {
        let mut vars = self.doc["Globals"]["Function"]["Environment"]["Variables"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Some(own) = function["Properties"]["Environment"]["Variables"].as_object() {
            vars.extend(own.clone());
        }
        vars
    }

    /// The function's events of one type (`SQS`, `HttpApi`).
    fn events<'a>(&self, function: &'a Value, ty: &str) -> Vec<&'a Value> {
        function["Properties"]["Events"]
            .as_object()
            .map(|events| events.values().filter(|e| e["Type"] == ty).collect())
            .unwrap_or_default()
    }
}

/// The resource that `!Ref X` or `!GetAtt X.Attr` points at.
fn target(value: &Value) -> Option<&str> {
    value["Ref"]
        .as_str()
        .or_else(|| value["Fn::GetAtt"][0].as_str())
}

fn number(value: &Value, what: &str) -> i64 {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

/// The `[[bin]]` names of a Cargo.toml (enough TOML for this workspace's).
fn bin_names(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", manifest.display()));
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(value) = line.strip_prefix("name").map(str::trim_start) {
                if let Some(value) = value.strip_prefix('=') {
                    names.push(value.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    names
}

#[test]
fn every_function_is_a_workspace_binary_built_with_cargo_lambda() {
    let t = Template::load();
    let mut deployed = BTreeSet::new();
    for (id, function) in t.resources_of_type("AWS::Serverless::Function") {
        let props = |key| t.function_property(function, key);
        assert_eq!(props("Runtime"), "provided.al2023", "{id} Runtime");
        assert_eq!(props("Handler"), "bootstrap", "{id} Handler");
        let arch = props("Architectures");
        assert!(
            arch == &json!(["arm64"]) || arch == &json!(["x86_64"]),
            "{id} Architectures is one of arm64 or x86_64, not {arch}"
        );
        assert_eq!(
            function["Metadata"]["BuildMethod"], "rust-cargolambda",
            "{id} BuildMethod"
        );
        let binary = function["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap_or_else(|| panic!("{id} has no Metadata.BuildProperties.Binary"));
        let code_uri = props("CodeUri")
            .as_str()
            .unwrap_or_else(|| panic!("{id} has no CodeUri"));
        let manifest = root().join(code_uri).join("Cargo.toml");
        assert!(
            bin_names(&manifest).iter().any(|b| b == binary),
            "{id}: {} has no [[bin]] named {binary}",
            manifest.display()
        );
        assert!(
            deployed.insert(binary.to_string()),
            "{binary} is deployed twice"
        );
    }
    let expected: BTreeSet<String> = FUNCTIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(deployed, expected, "the deployed binaries");

    // Every binary under functions/ is deployed.
    let mut built = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("functions")).expect("functions/ exists") {
        let manifest = entry
            .expect("functions/ is readable")
            .path()
            .join("Cargo.toml");
        if manifest.exists() {
            built.extend(bin_names(&manifest));
        }
    }
    assert_eq!(built, expected, "the binaries in functions/*/Cargo.toml");

    // A reserved concurrency below the event source's maximum would throttle it.
    let (id, process_chunk) = t.function_named("process-chunk");
    if let Some(reserved) = process_chunk["Properties"].get("ReservedConcurrentExecutions") {
        assert!(
            number(reserved, id) >= 5,
            "{id} ReservedConcurrentExecutions below 5"
        );
    }
}

/// Checks the SQS event of `binary`'s function and its queue; returns the
/// queue's logical id and its maxReceiveCount.
fn check_queue_and_consumer(t: &Template, binary: &str) -> (String, i64) {
    let (id, function) = t.function_named(binary);
    let events = t.events(function, "SQS");
    assert_eq!(events.len(), 1, "{id} has one SQS event");
    let event = &events[0]["Properties"];
    assert_eq!(
        number(&event["BatchSize"], "BatchSize"),
        1,
        "{id} SQS BatchSize"
    );
    assert!(
        event["FunctionResponseTypes"]
            .as_array()
            .is_some_and(|types| types.iter().any(|t| t == "ReportBatchItemFailures")),
        "{id} SQS event reports batch item failures"
    );

    let queue_id = target(&event["Queue"])
        .unwrap_or_else(|| panic!("{id} SQS Queue is not a !GetAtt of a queue in the template"));
    let queue = t.resource(queue_id);
    assert_eq!(
        queue["Type"], "AWS::SQS::Queue",
        "{queue_id} is an SQS queue"
    );
    let timeout = number(t.function_property(function, "Timeout"), "Timeout");
    let visibility = number(
        &queue["Properties"]["VisibilityTimeout"],
        "VisibilityTimeout",
    );
    assert!(
        visibility >= 6 * timeout,
        "{queue_id} VisibilityTimeout {visibility} is below 6x {id}'s Timeout {timeout}"
    );

    let redrive = &queue["Properties"]["RedrivePolicy"];
    let dlq_id = target(&redrive["deadLetterTargetArn"])
        .unwrap_or_else(|| panic!("{queue_id} has no RedrivePolicy to a queue of the template"));
    assert_ne!(
        dlq_id, queue_id,
        "{queue_id} is not its own dead-letter queue"
    );
    assert_eq!(
        t.resource(dlq_id)["Type"],
        "AWS::SQS::Queue",
        "{dlq_id} is an SQS queue"
    );
    let max_receives = number(&redrive["maxReceiveCount"], "maxReceiveCount");
    assert_eq!(max_receives, 5, "{queue_id} maxReceiveCount");
    (queue_id.to_string(), max_receives)
}

#[test]
fn chunk_queue_feeds_process_chunk_five_at_a_time() {
    let t = Template::load();
    let (queue_id, max_receives) = check_queue_and_consumer(&t, "process-chunk");
    let (id, function) = t.function_named("process-chunk");
    assert_eq!(
        number(t.function_property(function, "Timeout"), "Timeout"),
        300,
        "{id} Timeout"
    );
    let event = &t.events(function, "SQS")[0]["Properties"];
    assert_eq!(
        number(
            &event["ScalingConfig"]["MaximumConcurrency"],
            "MaximumConcurrency"
        ),
        5,
        "{id} SQS ScalingConfig.MaximumConcurrency"
    );

    let env = t.environment(function);
    assert_eq!(
        env.get("CHUNK_MAX_RECEIVES")
            .map(|v| number(v, "CHUNK_MAX_RECEIVES")),
        Some(max_receives),
        "{id} CHUNK_MAX_RECEIVES equals the chunk queue's maxReceiveCount"
    );
    for (_, f) in t.resources_of_type("AWS::Serverless::Function") {
        if let Some(url) = t.environment(f).get("CHUNK_QUEUE_URL") {
            assert_eq!(
                target(url),
                Some(queue_id.as_str()),
                "CHUNK_QUEUE_URL is the chunk queue"
            );
        }
    }
}

#[test]
fn finalize_queue_feeds_finalize() {
    let t = Template::load();
    let (queue_id, _) = check_queue_and_consumer(&t, "finalize");
    let (chunk_queue, _) = check_queue_and_consumer(&t, "process-chunk");
    assert_ne!(queue_id, chunk_queue, "finalize has its own queue");
    for (_, f) in t.resources_of_type("AWS::Serverless::Function") {
        if let Some(url) = t.environment(f).get("FINALIZE_QUEUE_URL") {
            assert_eq!(
                target(url),
                Some(queue_id.as_str()),
                "FINALIZE_QUEUE_URL is the finalize queue"
            );
        }
    }
    // process-chunk tells finalize when a film is done.
    let (id, process_chunk) = t.function_named("process-chunk");
    assert!(
        t.environment(process_chunk)
            .contains_key("FINALIZE_QUEUE_URL"),
        "{id} FINALIZE_QUEUE_URL"
    );
}

/// The queue that a function's environment variable `var` is the URL of.
fn queue_in_env(t: &Template, binary: &str, var: &str) -> String {
    let env = t.environment(t.function_named(binary).1);
    target(&env[var])
        .unwrap_or_else(|| panic!("{binary} {var} is a !Ref of a queue"))
        .to_string()
}

/// The queues a function's SQSSendMessagePolicy lets it send to.
fn send_targets(function: &Value) -> BTreeSet<String> {
    function["Properties"]["Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| target(&p["SQSSendMessagePolicy"]["QueueName"]))
        .map(str::to_string)
        .collect()
}

#[test]
fn functions_may_send_to_the_queues_they_feed() {
    let t = Template::load();
    let chunk_queue = queue_in_env(&t, "submit", "CHUNK_QUEUE_URL");
    let finalize_queue = queue_in_env(&t, "finalize", "FINALIZE_QUEUE_URL");
    for (binary, queue) in [
        ("submit", &chunk_queue),
        ("process-chunk", &finalize_queue),
        ("force-finalize", &chunk_queue),
    ] {
        let (id, function) = t.function_named(binary);
        assert!(
            send_targets(function).contains(queue),
            "{id} has SQSSendMessagePolicy on {queue}"
        );
    }
}

#[test]
fn the_sweeper_runs_every_five_minutes_and_may_send_to_both_queues() {
    let t = Template::load();
    let (id, sweeper) = t.function_named("sweeper");
    let schedules = t.events(sweeper, "Schedule");
    assert_eq!(schedules.len(), 1, "{id} has one Schedule event");
    assert_eq!(
        schedules[0]["Properties"]["Schedule"], "rate(5 minutes)",
        "{id} Schedule"
    );
    assert!(
        schedules[0]["Properties"]["Enabled"] != false,
        "{id} schedule is enabled"
    );
    assert!(
        t.events(sweeper, "SQS").is_empty() && t.events(sweeper, "HttpApi").is_empty(),
        "{id} is started by its schedule only"
    );
    let chunk_queue = queue_in_env(&t, "sweeper", "CHUNK_QUEUE_URL");
    let finalize_queue = queue_in_env(&t, "sweeper", "FINALIZE_QUEUE_URL");
    assert_eq!(
        chunk_queue,
        queue_in_env(&t, "submit", "CHUNK_QUEUE_URL"),
        "{id} sends chunk messages where submit does"
    );
    assert_eq!(
        finalize_queue,
        queue_in_env(&t, "process-chunk", "FINALIZE_QUEUE_URL"),
        "{id} sends finalize messages where process-chunk does"
    );
    let targets = send_targets(sweeper);
    for queue in [&chunk_queue, &finalize_queue] {
        assert!(
            targets.contains(queue),
            "{id} has SQSSendMessagePolicy on {queue}"
        );
    }
    // A sweep that runs past the next one is harmless, but one that cannot
    // finish its sends in time leaves them to the sweep after.
    let timeout = number(t.function_property(sweeper, "Timeout"), "Timeout");
    assert!(
        (30..=300).contains(&timeout),
        "{id} Timeout {timeout} is between 30 s and the 5-minute period"
    );
}

#[test]
fn process_chunk_may_set_the_retry_delay_on_its_queue() {
    // ChangeMessageVisibility comes with SQSPollerPolicy, not with the
    // permissions SAM gives an SQS event source.
    let t = Template::load();
    let chunk_queue = queue_in_env(&t, "process-chunk", "CHUNK_QUEUE_URL");
    let (id, function) = t.function_named("process-chunk");
    let pollers: BTreeSet<String> = function["Properties"]["Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| target(&p["SQSPollerPolicy"]["QueueName"]))
        .map(str::to_string)
        .collect();
    assert!(
        pollers.contains(&chunk_queue),
        "{id} has SQSPollerPolicy on {chunk_queue}"
    );
}

#[test]
fn every_route_reaches_its_function() {
    let t = Template::load();
    let apis: Vec<_> = t
        .resources_of_type("AWS::Serverless::HttpApi")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(apis.len(), 1, "one HTTP API");
    let api = &apis[0];

    let mut routes = BTreeSet::new();
    for binary in FUNCTIONS {
        let (id, function) = t.function_named(binary);
        for event in t.events(function, "HttpApi") {
            let props = &event["Properties"];
            assert_eq!(
                target(&props["ApiId"]),
                Some(api.as_str()),
                "{id} route is on {api}"
            );
            let method = props["Method"].as_str().expect("Method").to_uppercase();
            let path = props["Path"].as_str().expect("Path").to_string();
            assert!(
                routes.insert((method, path, binary.to_string())),
                "{id} route twice"
            );
        }
    }
    let expected: BTreeSet<_> = ROUTES
        .iter()
        .map(|(m, p, b)| (m.to_string(), p.to_string(), b.to_string()))
        .collect();
    assert_eq!(routes, expected, "the HTTP routes and their functions");

    let outputs = t.section("Outputs");
    let api_url = serde_json::to_string(&outputs["ApiUrl"]["Value"]).unwrap();
    assert!(
        api_url.contains(&format!("${{{api}}}")),
        "ApiUrl is the URL of {api}: {api_url}"
    );
    for (output, binary, var) in [
        ("ChunkQueueUrl", "submit", "CHUNK_QUEUE_URL"),
        ("FinalizeQueueUrl", "finalize", "FINALIZE_QUEUE_URL"),
    ] {
        let queue = queue_in_env(&t, binary, var);
        assert_eq!(
            target(&outputs[output]["Value"]),
            Some(queue.as_str()),
            "{output} output"
        );
    }
}

/// The dynamic references a secret variable's value can take: both branches
/// of an `!If`, nothing for `AWS::NoValue`, the string of a `!Sub`.
fn secret_sources(value: &Value, conditional: bool) -> Vec<(String, bool)> {
    if let Some([_, yes, no]) = value["Fn::If"].as_array().map(Vec::as_slice) {
        let mut all = secret_sources(yes, true);
        all.extend(secret_sources(no, true));
        return all;
    }
    if value["Ref"] == "AWS::NoValue" {
        return Vec::new();
    }
    match value.get("Fn::Sub").unwrap_or(value) {
        Value::String(s) => vec![(s.clone(), conditional)],
        Value::Array(a) if a.len() == 2 && a[0].is_string() => {
            vec![(a[0].as_str().unwrap().to_string(), conditional)]
        }
        other => vec![(other.to_string(), conditional)],
    }
}

/// The `${Name}`s of a `!Sub` string.
fn sub_names(s: &str) -> Vec<&str> {
    s.split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
        .collect()
}

#[test]
fn secrets_come_from_secrets_manager_and_have_no_default() {
    let t = Template::load();
    let params = t.section("Parameters");
    let mut secret_params = BTreeMap::new(); // name -> needed by every deploy
    for (id, function) in t.resources_of_type("AWS::Serverless::Function") {
        let env = t.environment(function);
        for var in SECRET_VARS {
            let Some(value) = env.get(var) else { continue };
            for (source, conditional) in secret_sources(value, false) {
                assert!(
                    source.starts_with(DYNAMIC_SECRET) && source.ends_with("}}"),
                    "{id} {var} is a Secrets Manager dynamic reference, not {source}"
                );
                for name in sub_names(&source) {
                    assert!(
                        params.contains_key(name),
                        "{id} {var}: ${{{name}}} is a parameter"
                    );
                    let required = secret_params.entry(name.to_string()).or_insert(false);
                    *required |= !conditional;
                }
            }
        }
    }
    // Which function needs which secret.
    let env_of = |binary| t.environment(t.function_named(binary).1);
    for binary in FUNCTIONS {
        assert!(
            env_of(binary).contains_key("DATABASE_URL"),
            "{binary} DATABASE_URL"
        );
    }
    for (_, _, binary) in ROUTES {
        assert!(
            env_of(binary).contains_key("SUPABASE_JWT_SECRET"),
            "{binary} SUPABASE_JWT_SECRET"
        );
    }
    for var in ["GEMINI_API_KEYS", "REPLICATE_API_TOKENS"] {
        assert!(
            env_of("process-chunk").contains_key(var),
            "process-chunk {var}"
        );
    }

    // A parameter that names an always-needed secret has no Default; one
    // that names an optional secret may default to empty (not used).
    // Parameters that are secrets themselves (NoEcho) have no Default.
    assert!(
        secret_params.values().any(|&r| r),
        "some secret is always needed"
    );
    for (name, param) in params {
        let default = param.get("Default");
        let required = secret_params.get(name).copied();
        if required == Some(true) || param["NoEcho"] == true || param["NoEcho"] == "true" {
            assert!(default.is_none(), "secret parameter {name} has no Default");
        } else if required == Some(false) {
            assert!(
                default.is_none() || default == Some(&json!("")),
                "optional secret parameter {name} defaults to empty"
            );
        }
    }
}

#[test]
fn template_holds_no_literal_secrets() {
    let t = Template::load();
    let lower = t.text.to_lowercase();
    for marker in [
        "postgres://",
        "postgresql://",
        "password=",
        "-----begin",
        "eyj",  // a JWT's header
        "aiza", // a Google API key
        "r8_",  // a Replicate token
        "akia", // an AWS access key
        "sb_secret_",
    ] {
        assert!(!lower.contains(marker), "template.yaml contains '{marker}'");
    }
    // No long token of letters and digits, as keys and secrets are.
    let token_char = |c: char| c.is_ascii_alphanumeric() || "+/=_-".contains(c);
    for token in t.text.split(|c: char| !token_char(c)) {
        let looks_random = token.len() >= 24
            && token.chars().any(|c| c.is_ascii_digit())
            && token.chars().any(|c| c.is_ascii_alphabetic());
        assert!(
            !looks_random,
            "template.yaml holds a secret-looking value: {token}"
        );
    }
    // Every value of a secret variable came from a dynamic reference (checked
    // above); the parameters' defaults are not secrets either.
    for (name, param) in t.section("Parameters") {
        if let Some(default) = param["Default"].as_str() {
            assert!(
                default.len() < 24,
                "parameter {name} has a long Default: {default}"
            );
        }
    }
}

#[test]
fn cfn_lint_accepts_the_template() {
    let lint = std::env::var("SHOTLIST_CFN_LINT").unwrap_or_default();
    if lint.is_empty() {
        let ci = std::env::var("CI").unwrap_or_default();
        assert!(
            ci.is_empty(),
            "CI is set but SHOTLIST_CFN_LINT is not: set it to the cfn-lint binary, e.g. \
             SHOTLIST_CFN_LINT=\"$(./scripts/install-pytools | tail -n1)/cfn-lint\""
        );
        eprintln!("cfn_lint_accepts_the_template: skipped, SHOTLIST_CFN_LINT is not set");
        return;
    }
    let output = Command::new(&lint)
        .arg("template.yaml")
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {lint}: {e}"));
    assert!(
        output.status.success(),
        "cfn-lint template.yaml exited with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn read_event(name: &str) -> String {
    let path = root().join("events").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Checks an SQS sample event and returns the bodies of its records.
fn check_sqs_event(name: &str) -> Vec<String> {
    let event: SqsEvent = serde_json::from_str(&read_event(name))
        .unwrap_or_else(|e| panic!("{name} is not an SqsEvent: {e}"));
    assert!(!event.records.is_empty(), "{name} has records");
    let mut ids = BTreeSet::new();
    for record in &event.records {
        let id = record.message_id.clone().unwrap_or_default();
        assert!(
            !id.is_empty() && ids.insert(id),
            "{name}: every record has its own messageId"
        );
        assert!(
            record
                .receipt_handle
                .as_ref()
                .is_some_and(|h| !h.is_empty()),
            "{name} receiptHandle"
        );
        let count = record.attributes.get("ApproximateReceiveCount");
        assert!(
            count
                .and_then(|c| c.parse::<u32>().ok())
                .is_some_and(|c| c >= 1),
            "{name} ApproximateReceiveCount"
        );
        assert_eq!(
            record.event_source.as_deref(),
            Some("aws:sqs"),
            "{name} eventSource"
        );
        let arn = record.event_source_arn.as_deref().unwrap_or_default();
        assert!(
            arn.starts_with("arn:aws:sqs:"),
            "{name} eventSourceARN {arn}"
        );
        let region = record.aws_region.as_deref().unwrap_or_default();
        assert!(
            !region.is_empty() && arn.contains(region),
            "{name} awsRegion"
        );
    }
    event
        .records
        .iter()
        .map(|r| {
            r.body
                .clone()
                .unwrap_or_else(|| panic!("{name}: a record has no body"))
        })
        .collect()
}

fn check_http_event(name: &str, route_key: &str) -> ApiGatewayV2httpRequest {
    let event: ApiGatewayV2httpRequest = serde_json::from_str(&read_event(name))
        .unwrap_or_else(|e| panic!("{name} is not an ApiGatewayV2httpRequest: {e}"));
    assert_eq!(event.version.as_deref(), Some("2.0"), "{name} version");
    assert_eq!(
        event.route_key.as_deref(),
        Some(route_key),
        "{name} routeKey"
    );
    assert_eq!(
        event.request_context.route_key.as_deref(),
        Some(route_key),
        "{name} requestContext.routeKey"
    );
    let (method, route_path) = route_key
        .split_once(' ')
        .expect("a route key is METHOD PATH");
    assert!(
        ROUTES
            .iter()
            .any(|(m, p, _)| *m == method && *p == route_path),
        "{name}: {route_key} is a route of the template"
    );
    assert_eq!(
        event.request_context.http.method.as_str(),
        method,
        "{name} requestContext.http.method"
    );

    let mut path = route_path.to_string();
    if route_path.contains("{id}") {
        let id = event
            .path_parameters
            .get("id")
            .unwrap_or_else(|| panic!("{name} pathParameters.id"));
        Uuid::parse_str(id)
            .unwrap_or_else(|e| panic!("{name} pathParameters.id is not a UUID: {e}"));
        path = path.replace("{id}", id);
    }
    assert_eq!(
        event.raw_path.as_deref(),
        Some(path.as_str()),
        "{name} rawPath"
    );
    assert_eq!(
        event.request_context.http.path.as_deref(),
        Some(path.as_str()),
        "{name} http.path"
    );
    let auth = event
        .headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or_default());
    assert!(
        auth.is_some_and(|a| a.starts_with("Bearer ")),
        "{name} has an authorization: Bearer header"
    );
    assert!(!event.is_base64_encoded, "{name} isBase64Encoded is false");
    event
}

fn json_body(name: &str, event: &ApiGatewayV2httpRequest) -> Value {
    let body = event
        .body
        .as_deref()
        .unwrap_or_else(|| panic!("{name} has a body"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{name} body is not JSON: {e}"))
}

#[test]
fn sample_events_are_valid_lambda_events() {
    let expected = [
        "http-finalize.json",
        "http-force-finalize.json",
        "http-status.json",
        "http-submit.json",
        "schedule-sweep.json",
        "sqs-chunk-batch.json",
        "sqs-finalize.json",
    ];
    let found: BTreeSet<String> = std::fs::read_dir(root().join("events"))
        .expect("events/ exists")
        .map(|e| {
            e.expect("events/ is readable")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected_set: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        found, expected_set,
        "the files in events/ (add a check here for a new one)"
    );

    let bodies = check_sqs_event("sqs-chunk-batch.json");
    assert_eq!(bodies.len(), 3, "sqs-chunk-batch.json has 3 records");
    let chunks: Vec<ChunkMessage> = bodies
        .iter()
        .map(|b| {
            serde_json::from_str(b).unwrap_or_else(|e| panic!("a chunk message body {b}: {e}"))
        })
        .collect();
    let indexes: BTreeSet<u32> = chunks.iter().map(|c| c.chunk_index).collect();
    assert_eq!(
        indexes.len(),
        3,
        "the chunk batch names three different chunks"
    );

    let bodies = check_sqs_event("sqs-finalize.json");
    assert_eq!(bodies.len(), 1, "sqs-finalize.json has 1 record");
    let finalize: FinalizeMessage =
        serde_json::from_str(&bodies[0]).expect("a finalize message body");
    assert!(
        chunks.iter().all(|c| c.video_id == finalize.video_id),
        "the samples are about one film"
    );

    let submit = check_http_event("http-submit.json", "POST /videos");
    assert!(
        json_body("http-submit.json", &submit)["source"].is_string(),
        "submit body has source"
    );
    check_http_event("http-status.json", "GET /videos/{id}");
    check_http_event("http-finalize.json", "POST /videos/{id}/finalize");
    let force = check_http_event(
        "http-force-finalize.json",
        "POST /videos/{id}/force-finalize",
    );
    assert_eq!(
        json_body("http-force-finalize.json", &force),
        json!({"retry": false})
    );

    // EventBridge's scheduled event, as the sweeper's schedule sends it.
    let schedule: Value = serde_json::from_str(&read_event("schedule-sweep.json"))
        .unwrap_or_else(|e| panic!("schedule-sweep.json is not JSON: {e}"));
    assert_eq!(schedule["detail-type"], "Scheduled Event", "detail-type");
    assert_eq!(schedule["source"], "aws.events", "source");
    let region = schedule["region"].as_str().unwrap_or_default();
    let rule = schedule["resources"][0].as_str().unwrap_or_default();
    assert!(
        !region.is_empty() && rule.starts_with(&format!("arn:aws:events:{region}:")),
        "schedule-sweep.json resources[0] is an EventBridge rule of its region: {rule}"
    );
    assert!(schedule["detail"].is_object(), "detail is an object");
}
