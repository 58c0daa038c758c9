"""Policy checks for infra/template.yaml, on the raw SAM template and on its SAM-expanded form.

Run:  pytest infra/test_template.py        (or)   python infra/test_template.py
Needs pyyaml, and cfn-lint + aws-sam-cli (samtranslator) for the expansion: scripts/infra-tools.sh.
INFRA_TEMPLATE overrides the template path; INFRA_EXPANDED points at a pre-expanded JSON
(otherwise the template is expanded in-process with sam_expand.expand).

IAM rules (identity policies: AWS::IAM::Role inline Policies, AWS::IAM::Policy/ManagedPolicy,
AWS::Serverless::Function Policies):
  * no Action containing "*", no NotAction / NotResource;
  * no Resource containing "*", except the documented log-stream suffix: a statement whose
    actions are only logs:CreateLogStream / logs:PutLogEvents may end its resource in ":*"
    after one named log group (arn:...:log-group:<name>:* or ...:log-group:<name>:log-stream:*);
  * no ManagedPolicyArns and no SAM policy templates / named policies (opaque to this check);
  * no AWS::Serverless::Function without an explicit Role (SAM would attach the managed
    AWSLambdaBasicExecutionRole, whose statements use Resource "*");
  * no "?" wildcard in a Resource either (e.g. a secret name with "-??????");
  * webhook-receiver: sqs:SendMessage on the events queue, secretsmanager:GetSecretValue on exactly
    the secret its WORKOS_WEBHOOK_SECRET_ARN names, writes to its own log group, nothing else;
  * event-processor: the listed DynamoDB actions on the two tables (no index any more), the SQS
    event-source actions and sqs:SendMessage (continuations) on the events queue,
    secretsmanager:GetSecretValue on exactly the secret its WORKOS_API_KEY_SECRET_ARN names, writes
    to its own log group, nothing else;
  * events-poller: dynamodb GetItem/PutItem (cursor), Query (registry), UpdateItem (WorkOS budget) on
    the state table only; scheduler: GetItem (fences), Query (registry), UpdateItem (budget) on the
    state table only; both sqs:SendMessage on the events queue, GetSecretValue on exactly their API
    key secret, writes to their own log group, nothing else; every function has its own role.
  * the SAM-generated EventBridge Scheduler roles may only lambda:InvokeFunction their function.

Secrets: no secret value in any function's environment. The functions read their secrets at run
time; the environment holds only the secrets' ARNs (`*_SECRET_ARN`, a Ref to an ARN parameter with
an AllowedPattern). A literal, a NoEcho parameter or a `{{resolve:...}}` dynamic reference in the
environment is flagged.
"""
import copy
import functools
import json
import os
import re
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.environ.get("INFRA_TEMPLATE", os.path.join(HERE, "template.yaml"))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

RECEIVER_BIN = "webhook-receiver"
PROCESSOR_BIN = "event-processor"
POLLER_BIN = "events-poller"
SCHEDULER_BIN = "scheduler"

LOG_ACTIONS = {"logs:CreateLogStream", "logs:PutLogEvents"}
SECRET_ACTIONS = {"secretsmanager:GetSecretValue"}
RECEIVER_ACTIONS = {"sqs:SendMessage"} | SECRET_ACTIONS | LOG_ACTIONS
DDB_ACTIONS = {
    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
    "dynamodb:Query", "dynamodb:BatchWriteItem", "dynamodb:BatchGetItem", "dynamodb:ConditionCheckItem",
}
SQS_CONSUMER_ACTIONS = {
    "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility",
}
PROCESSOR_ACTIONS = DDB_ACTIONS | SQS_CONSUMER_ACTIONS | {"sqs:SendMessage"} | SECRET_ACTIONS | LOG_ACTIONS
# The scheduled workers: what each may do on the state table, and nothing on any other table.
WORKER_DDB = {
    POLLER_BIN: {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"},
    SCHEDULER_BIN: {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query"},
}

# The one documented wildcard: the log-stream suffix of a single, named log group.
LOG_STREAM_RE = re.compile(
    r"arn:(\$\{AWS::Partition\}|aws[a-z-]*):logs:(\$\{AWS::Region\}|[a-z0-9-]+):"
    r"(\$\{AWS::AccountId\}|\d{12}):log-group:[^*:]+:(log-stream:)?\*"
)

SECRET_ENV_RE = re.compile(r"SECRET|API_KEY|PASSWORD|PRIVATE_KEY|CREDENTIAL|TOKEN")
# WEBHOOK_PATH_TOKEN is not a credential: it is part of the webhook URL (shown in the WebhookUrl
# output and configured in the WorkOS dashboard); the HMAC signature secret is the credential.
NOT_SECRET_ENV = {"WEBHOOK_PATH_TOKEN"}
# A secret-named variable may only hold a secret's ARN, and then its name says so.
SECRET_ARN_ENV_RE = re.compile(r"[A-Z0-9_]+_SECRET_ARN")
# The functions' secrets, by the variable naming the secret's ARN.
RECEIVER_SECRET_ENV = "WORKOS_WEBHOOK_SECRET_ARN"
PROCESSOR_SECRET_ENV = "WORKOS_API_KEY_SECRET_ARN"
# The variables that held secret values before; they must not come back.
SECRET_VALUE_ENV = {"WORKOS_WEBHOOK_SECRET", "WORKOS_API_KEY"}
SECRET_ARN_PATTERN_RE = re.compile(r"\^arn:aws.*:secretsmanager:.*:secret:")
DYNAMIC_REF_RE = re.compile(r"\{\{resolve:", re.I)

RECEIVER_ENV = {"EVENTS_QUEUE_URL", RECEIVER_SECRET_ENV, "WORKOS_SIGNATURE_TOLERANCE_SECS",
                "WEBHOOK_PATH_TOKEN", "WORKOS_ALLOWED_IPS"}
PROCESSOR_ENV = {"EVENTS_TABLE", "STATE_TABLE", PROCESSOR_SECRET_ENV, "WORKOS_API_BASE_URL",
                 "ENTITLEMENT_RULES", "CLAIM_TTL_DAYS", "EVENTS_QUEUE_URL", "CHUNK_SECONDS",
                 "DIRECTORY_CONCURRENCY", "WORKOS_KEY_RATE_PER_MINUTE"}
WORKER_ENV = {"STATE_TABLE", "EVENTS_QUEUE_URL", PROCESSOR_SECRET_ENV, "WORKOS_API_BASE_URL",
              "WORKOS_KEY_RATE_PER_MINUTE"}
POLLER_ENV = WORKER_ENV | {"EVENTS_LOOKBACK_HOURS", "EVENTS_RETENTION_DAYS", "EVENTS_MAX_PAGES"}
SCHEDULER_ENV = WORKER_ENV | {"SCHEDULER_STALE_JOB_MINUTES"}
# Settings that are gone and must not come back.
REMOVED_ENV = {"STORE_CONCURRENCY"}
# (binary, schedule parameter, its default)
SCHEDULES = ((POLLER_BIN, "EventsPollerSchedule", "rate(1 minute)"),
             (SCHEDULER_BIN, "SchedulerSchedule", "rate(6 hours)"))

SHORT_TAG_RE = re.compile(
    r"(^|[\s\[,:-])!(Ref|GetAtt|Sub|If|Join|Select|Split|Equals|Not|And|Or|FindInMap|Base64|Cidr|"
    r"ImportValue|GetAZs|Condition|Transform|Contains|EachMemberEquals|EachMemberIn|ValueOf|"
    r"ValueOfAll|RefAll|Length|ToJsonString)\b",
    re.M,
)


# ----------------------------------------------------------------------------- helpers
def as_list(x):
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def strings_of(v):
    """All strings an intrinsic-bearing value may render to, with Ref/GetAtt kept as ${...}."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, (int, float, bool)):
        return [str(v)]
    if isinstance(v, list):
        return [s for item in v for s in strings_of(item)]
    if isinstance(v, dict) and len(v) == 1:
        (k, a), = v.items()
        if k == "Ref":
            return ["${%s}" % a]
        if k == "Fn::GetAtt":
            return ["${%s}" % ".".join(as_list(a) if isinstance(a, list) else [a])]
        if k == "Fn::Sub":
            if isinstance(a, list):
                out = [a[0]]
                for vv in (a[1] if len(a) > 1 else {}).values():
                    out += strings_of(vv)
                return out
            return [a]
        if k == "Fn::Join":
            parts = [strings_of(p) for p in a[1]]
            return [a[0].join(p[0] if p else "" for p in parts)] + [s for p in parts for s in p[1:]]
        if k == "Fn::If":
            return strings_of(a[1]) + strings_of(a[2])
    if isinstance(v, dict):
        return [s for vv in v.values() for s in strings_of(vv)]
    return [json.dumps(v, default=str)]


def ref_target(v):
    """Logical id of a {Ref: X} / {Fn::GetAtt: [X, attr]} value, else None."""
    if isinstance(v, dict) and len(v) == 1:
        (k, a), = v.items()
        if k == "Ref" and isinstance(a, str):
            return a
        if k == "Fn::GetAtt":
            if isinstance(a, str):
                return a.split(".")[0]
            return a[0]
    return None


def param_default(tpl, name):
    return tpl.get("Parameters", {}).get(name, {}).get("Default")


def resources(tpl, *types):
    return {k: r for k, r in tpl.get("Resources", {}).items() if not types or r.get("Type") in types}


FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")


def function_by_bin(tpl, binary):
    for lid, r in resources(tpl, *FUNCTION_TYPES).items():
        if r.get("Metadata", {}).get("BuildProperties", {}).get("Binary") == binary:
            return lid, r
    return None, None


# ----------------------------------------------------------------------------- IAM
def collect_iam(tpl):
    """Returns (problems, statements_by_role) for every identity policy in the template."""
    problems = []
    by_role = {}  # role logical id -> [statement]
    res = tpl.get("Resources", {})

    def add(role, where, doc):
        stmts = as_list((doc or {}).get("Statement"))
        if not stmts:
            problems.append(f"{where}: policy document without statements")
        for st in stmts:
            problems.extend(check_statement(where, st))
            if role:
                by_role.setdefault(role, []).append(st)

    for lid, r in res.items():
        t, p = r.get("Type"), r.get("Properties", {}) or {}
        if t == "AWS::IAM::Role":
            by_role.setdefault(lid, [])
            if p.get("ManagedPolicyArns"):
                problems.append(f"{lid}: ManagedPolicyArns {p['ManagedPolicyArns']} (managed policies are not allowed; write inline statements)")
            for pol in as_list(p.get("Policies")):
                add(lid, f"{lid}/{pol.get('PolicyName')}", pol.get("PolicyDocument"))
        elif t in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            roles = [ref_target(x) for x in as_list(p.get("Roles"))]
            if p.get("Users") or p.get("Groups"):
                problems.append(f"{lid}: policy attached to users/groups")
            for role in roles or [None]:
                add(role, lid, p.get("PolicyDocument"))
        elif t == "AWS::Serverless::Function":
            if not p.get("Role"):
                problems.append(f"{lid}: AWS::Serverless::Function without an explicit Role "
                                "(SAM attaches the managed AWSLambdaBasicExecutionRole, Resource '*')")
            for pol in as_list(p.get("Policies")):
                if isinstance(pol, dict) and "Statement" in pol:
                    add(ref_target(p.get("Role")) or f"{lid}Role", f"{lid}/Policies", pol)
                else:
                    problems.append(f"{lid}: Policies entry {json.dumps(pol, default=str)} is a managed policy or SAM "
                                    "policy template, opaque to this check; write inline statements")
    return problems, by_role


def check_statement(where, st):
    problems = []
    sid = st.get("Sid", "?")
    w = f"{where}[{sid}]"
    for bad in ("NotAction", "NotResource", "NotPrincipal"):
        if bad in st:
            problems.append(f"{w}: uses {bad}")
    actions = [a for v in as_list(st.get("Action")) for a in strings_of(v)]
    if not actions:
        problems.append(f"{w}: no Action")
    for a in actions:
        if "*" in a:
            problems.append(f"{w}: wildcard Action {a!r}")
    if "Resource" not in st:
        problems.append(f"{w}: no Resource")
    for s in (s for v in as_list(st.get("Resource")) for s in strings_of(v)):
        if "?" in s:
            problems.append(f"{w}: wildcard Resource {s!r} ('?')")
            continue
        if "*" not in s:
            continue
        if LOG_STREAM_RE.fullmatch(s) and actions and set(actions) <= LOG_ACTIONS:
            continue  # documented log-stream suffix of one named log group
        problems.append(f"{w}: wildcard Resource {s!r}")
    return problems


def role_of(fn):
    return ref_target((fn.get("Properties") or {}).get("Role"))


def own_log_group(fn):
    return ref_target(((fn.get("Properties") or {}).get("LoggingConfig") or {}).get("LogGroup"))


def stmt_parts(st):
    acts = {a for v in as_list(st.get("Action")) for a in strings_of(v)}
    ress = [s for v in as_list(st.get("Resource")) for s in strings_of(v)]
    return acts, ress


def own_secret(fn, var):
    """The one secret resource the function may read: what its *_SECRET_ARN variable names."""
    val = ((fn.get("Properties") or {}).get("Environment") or {}).get("Variables", {}).get(var)
    return strings_of(val)[0] if val is not None else None


def check_secret_statement(who, acts, ress, secret):
    out = []
    if acts & SECRET_ACTIONS:
        if acts != SECRET_ACTIONS:
            out.append(f"{who} secret statement mixes actions: {sorted(acts)}")
        if secret is None or ress != [secret]:
            out.append(f"{who} secretsmanager:GetSecretValue resources {ress} != exactly its own secret {secret}")
    return out


def check_function_permissions(tpl, by_role):
    problems = []
    res = tpl.get("Resources", {})
    queue_ids = [k for k, r in res.items() if r.get("Type") == "AWS::SQS::Queue"]
    rid, rfn = function_by_bin(tpl, RECEIVER_BIN)
    pid, pfn = function_by_bin(tpl, PROCESSOR_BIN)
    if not rfn or not pfn:
        return [f"functions for bins {RECEIVER_BIN}/{PROCESSOR_BIN} not found"]
    rrole, prole = role_of(rfn), role_of(pfn)
    if not rrole or not prole or rrole == prole:
        return [f"receiver and processor need their own explicit roles (got {rrole}, {prole})"]
    owners = {}
    for lid, fn in resources(tpl, *FUNCTION_TYPES).items():
        role = role_of(fn)
        if role in owners:
            problems.append(f"{lid} shares role {role} with {owners[role]}: every function needs its own role")
        owners[role] = lid

    # --- receiver
    queue_ref = ref_target(rfn["Properties"].get("Environment", {}).get("Variables", {}).get("EVENTS_QUEUE_URL"))
    rlog = own_log_group(rfn)
    rsecret = own_secret(rfn, RECEIVER_SECRET_ENV)
    ractions = set()
    for st in by_role.get(rrole, []):
        acts, ress = stmt_parts(st)
        ractions |= acts
        if st.get("Effect") != "Allow":
            continue
        if acts & {"sqs:SendMessage"}:
            if ress != ["${%s.Arn}" % queue_ref]:
                problems.append(f"receiver sqs:SendMessage resources {ress} != the events queue {queue_ref}")
        if acts & LOG_ACTIONS:
            if not ress or any("${%s}" % rlog not in s and "${%s.Arn}" % rlog != s for s in ress):
                problems.append(f"receiver log statement resources {ress} are not its own log group {rlog}")
        problems.extend(check_secret_statement("receiver", acts, ress, rsecret))
        if acts & RECEIVER_ACTIONS and not (acts <= {"sqs:SendMessage"} or acts <= LOG_ACTIONS or acts <= SECRET_ACTIONS):
            problems.append(f"receiver statement mixes SQS, secret and log actions: {sorted(acts)}")
    for needed in ("sqs:SendMessage", "secretsmanager:GetSecretValue"):
        if needed not in ractions:
            problems.append(f"receiver role lacks {needed}")
    if ractions - RECEIVER_ACTIONS:
        problems.append("receiver role has actions beyond sqs:SendMessage + secretsmanager:GetSecretValue + logs: "
                        f"{sorted(ractions - RECEIVER_ACTIONS)}")

    # --- processor
    env = pfn["Properties"].get("Environment", {}).get("Variables", {})
    tables = {ref_target(env.get("EVENTS_TABLE")), ref_target(env.get("STATE_TABLE"))}
    plog = own_log_group(pfn)
    sqs_sources = {ref_target(e.get("Properties", {}).get("Queue"))
                   for e in (pfn["Properties"].get("Events") or {}).values() if e.get("Type") == "SQS"}
    for esm in resources(tpl, "AWS::Lambda::EventSourceMapping").values():
        if ref_target(esm["Properties"].get("FunctionName")) == pid:
            sqs_sources.add(ref_target(esm["Properties"].get("EventSourceArn")))
    sqs_sources.discard(None)
    allowed_ddb = {"${%s.Arn}" % t for t in tables}
    psecret = own_secret(pfn, PROCESSOR_SECRET_ENV)
    if psecret is not None and psecret == rsecret:
        problems.append(f"receiver and processor name the same secret {psecret}")
    pactions = set()
    for st in by_role.get(prole, []):
        acts, ress = stmt_parts(st)
        pactions |= acts
        if st.get("Effect") != "Allow":
            continue
        problems.extend(check_secret_statement("processor", acts, ress, psecret))
        if acts & DDB_ACTIONS:
            for s in ress:
                if s not in allowed_ddb:
                    problems.append(f"processor DynamoDB resource {s!r} is not one of the two tables")
        if acts & SQS_CONSUMER_ACTIONS:
            if not ress or any(s not in {"${%s.Arn}" % q for q in sqs_sources & set(queue_ids)} for s in ress):
                problems.append(f"processor SQS resources {ress} are not its event source queue {sorted(sqs_sources)}")
        if "sqs:SendMessage" in acts:
            if ress != ["${%s.Arn}" % q for q in sorted(sqs_sources & set(queue_ids))]:
                problems.append(f"processor sqs:SendMessage resources {ress} are not its event source queue")
        if acts & LOG_ACTIONS:
            if not ress or any("${%s}" % plog not in s and "${%s.Arn}" % plog != s for s in ress):
                problems.append(f"processor log statement resources {ress} are not its own log group {plog}")
        kinds = [acts & DDB_ACTIONS, acts & (SQS_CONSUMER_ACTIONS | {"sqs:SendMessage"}), acts & SECRET_ACTIONS,
                 acts & LOG_ACTIONS]
        if sum(1 for k in kinds if k) > 1:
            problems.append(f"processor statement mixes services: {sorted(acts)}")
    if pactions - PROCESSOR_ACTIONS:
        problems.append(f"processor role has unexpected actions: {sorted(pactions - PROCESSOR_ACTIONS)}")
    missing = PROCESSOR_ACTIONS - pactions
    if missing:
        problems.append(f"processor role lacks: {sorted(missing)}")
    return problems


def check_worker_permissions(tpl, by_role, binary):
    """A scheduled worker: its DynamoDB actions on the state table only, SendMessage on the events
    queue, GetSecretValue on its API key secret, its own log group; each of these present, nothing else."""
    lid, fn = function_by_bin(tpl, binary)
    if not fn:
        return [f"no function with BuildProperties.Binary {binary}"]
    role = role_of(fn)
    if not role:
        return [f"{binary} has no explicit role"]
    env = (fn.get("Properties") or {}).get("Environment", {}).get("Variables", {})
    table, queue = ref_target(env.get("STATE_TABLE")), ref_target(env.get("EVENTS_QUEUE_URL"))
    log, secret = own_log_group(fn), own_secret(fn, PROCESSOR_SECRET_ENV)
    _, rfn = function_by_bin(tpl, RECEIVER_BIN)
    if rfn and secret is not None and secret == own_secret(rfn, RECEIVER_SECRET_ENV):
        problems = [f"{binary} names the webhook secret"]
    else:
        problems = []
    ddb = WORKER_DDB[binary]
    allowed = ddb | {"sqs:SendMessage"} | SECRET_ACTIONS | LOG_ACTIONS
    actions = set()
    for st in by_role.get(role, []):
        acts, ress = stmt_parts(st)
        actions |= acts
        if st.get("Effect") != "Allow":
            continue
        if any(a.startswith("dynamodb:") for a in acts) and ress != ["${%s.Arn}" % table]:
            problems.append(f"{binary} DynamoDB resources {ress} != the state table {table}")
        if "sqs:SendMessage" in acts and ress != ["${%s.Arn}" % queue]:
            problems.append(f"{binary} sqs:SendMessage resources {ress} != the events queue {queue}")
        if acts & LOG_ACTIONS and (not ress or any("${%s}" % log not in s for s in ress)):
            problems.append(f"{binary} log statement resources {ress} are not its own log group {log}")
        problems.extend(check_secret_statement(binary, acts, ress, secret))
        kinds = [a.split(":")[0] for a in acts]
        if len(set(kinds)) > 1:
            problems.append(f"{binary} statement mixes services: {sorted(acts)}")
    if actions - allowed:
        problems.append(f"{binary} role has unexpected actions: {sorted(actions - allowed)}")
    if allowed - actions:
        problems.append(f"{binary} role lacks: {sorted(allowed - actions)}")
    return problems


def check_schedule_roles(tpl):
    """Roles SAM generates for ScheduleV2 events: lambda:InvokeFunction on their function, nothing else."""
    problems = []
    fn_ids = set(resources(tpl, *FUNCTION_TYPES))
    for sid, sch in resources(tpl, "AWS::Scheduler::Schedule").items():
        target = sch["Properties"].get("Target", {})
        fn = ref_target(target.get("Arn"))
        role = ref_target(target.get("RoleArn"))
        if fn not in fn_ids:
            problems.append(f"{sid}: schedule target {target.get('Arn')} is not a function of the stack")
            continue
        r = tpl["Resources"].get(role or "", {})
        if r.get("Type") != "AWS::IAM::Role":
            problems.append(f"{sid}: schedule role {role} is not a role of the stack")
            continue
        for pol in as_list(r["Properties"].get("Policies")):
            for st in as_list(pol.get("PolicyDocument", {}).get("Statement")):
                acts, ress = stmt_parts(st)
                if acts != {"lambda:InvokeFunction"} or ress != ["${%s.Arn}" % fn]:
                    problems.append(f"{sid}: schedule role {role} may {sorted(acts)} on {ress}")
    return problems


def check_iam(tpl):
    problems, by_role = collect_iam(tpl)
    problems += check_function_permissions(tpl, by_role)
    for binary in (POLLER_BIN, SCHEDULER_BIN):
        problems += check_worker_permissions(tpl, by_role, binary)
    return problems + check_schedule_roles(tpl)


# ----------------------------------------------------------------------------- other checks
def check_text(text):
    return [f"short-form intrinsic tag at line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
            for m in SHORT_TAG_RE.finditer(text)]


def check_secrets(tpl):
    """No secret value reaches a function's environment; secrets are read at run time by ARN."""
    problems = []
    params = tpl.get("Parameters", {})
    for lid, fn in resources(tpl, *FUNCTION_TYPES).items():
        env = ((fn.get("Properties") or {}).get("Environment") or {}).get("Variables") or {}
        for name, val in env.items():
            rendered = strings_of(val)
            if any(DYNAMIC_REF_RE.search(x) for x in rendered):
                problems.append(f"{lid}: env {name} uses a {{{{resolve:...}}}} dynamic reference: the value "
                                "would sit in the Lambda configuration; pass the secret's ARN and read it at run time")
                continue
            if name in SECRET_VALUE_ENV:
                problems.append(f"{lid}: env {name} carries a secret value; set {name}_SECRET_ARN"
                                if name.endswith("API_KEY") else
                                f"{lid}: env {name} carries a secret value; set {name}_ARN")
                continue
            if name in NOT_SECRET_ENV or not SECRET_ENV_RE.search(name):
                continue
            if not SECRET_ARN_ENV_RE.fullmatch(name):
                problems.append(f"{lid}: env {name} looks like a secret value; only *_SECRET_ARN variables "
                                "(a secret's ARN) may name secrets")
                continue
            target = ref_target(val)
            p = params.get(target) if isinstance(val, dict) and "Ref" in val else None
            res = tpl.get("Resources", {}).get(target or "", {})
            if p is not None:
                if p.get("NoEcho"):
                    problems.append(f"{lid}: env {name} refs NoEcho parameter {target}: an ARN is not a secret value")
                if not SECRET_ARN_PATTERN_RE.match(p.get("AllowedPattern", "")):
                    problems.append(f"{lid}: env {name} refs parameter {target} without a Secrets Manager ARN AllowedPattern")
            elif res.get("Type") != "AWS::SecretsManager::Secret":
                problems.append(f"{lid}: env {name} must Ref a secret-ARN parameter or an AWS::SecretsManager::Secret, "
                                f"got {val!r}")
    for name, p in params.items():
        if not re.search(r"secret|apikey|api_key|password", name, re.I):
            continue
        if p.get("NoEcho") or not name.endswith("Arn"):
            problems.append(f"parameter {name} looks like it carries a secret value; pass the secret's ARN "
                            "(a parameter named ...Arn)")
    return problems


def check_lambda_settings(tpl, raw):
    problems = []
    params = tpl.get("Parameters", {})
    arch = params.get("Architecture", {})
    if arch.get("Default") != "arm64" or set(arch.get("AllowedValues", [])) != {"arm64", "x86_64"}:
        problems.append("Architecture parameter must default to arm64 and allow x86_64")
    for binary, tparam, tdefault, env_keys in ((RECEIVER_BIN, "ReceiverTimeout", 4, RECEIVER_ENV),
                                               (PROCESSOR_BIN, "ProcessorTimeout", 60, PROCESSOR_ENV),
                                               (POLLER_BIN, "EventsPollerTimeout", 50, POLLER_ENV),
                                               (SCHEDULER_BIN, "SchedulerTimeout", 300, SCHEDULER_ENV)):
        lid, fn = function_by_bin(tpl, binary)
        if not fn:
            problems.append(f"no function with BuildProperties.Binary {binary}")
            continue
        p = fn.get("Properties", {})
        if p.get("Runtime") != "provided.al2023":
            problems.append(f"{lid}: Runtime {p.get('Runtime')}")
        if p.get("Handler") != "bootstrap":
            problems.append(f"{lid}: Handler {p.get('Handler')}")
        if p.get("Architectures") != [{"Ref": "Architecture"}]:
            problems.append(f"{lid}: Architectures must be [Ref Architecture]")
        if fn.get("Metadata", {}).get("BuildMethod") != "rust-cargolambda":
            problems.append(f"{lid}: Metadata.BuildMethod must be rust-cargolambda")
        if raw:
            if p.get("CodeUri") != "../":
                problems.append(f"{lid}: CodeUri must be ../ (the cargo workspace root, relative to infra/)")
            manifest = os.path.join(REPO, "functions", binary, "Cargo.toml")
            if os.path.exists(manifest) and f'name = "{binary}"' not in open(manifest).read():
                problems.append(f"{manifest} declares no bin/package named {binary}")
        if p.get("Timeout") != {"Ref": tparam} or param_default(tpl, tparam) != tdefault:
            problems.append(f"{lid}: Timeout must be Ref {tparam} with default {tdefault}")
        if p.get("MemorySize", {}).get("Ref") not in params:
            problems.append(f"{lid}: MemorySize must be a parameter")
        lc = p.get("LoggingConfig", {})
        if lc.get("LogFormat") != "JSON":
            problems.append(f"{lid}: LoggingConfig.LogFormat must be JSON")
        lg = tpl["Resources"].get(ref_target(lc.get("LogGroup")) or "", {})
        if lg.get("Type") != "AWS::Logs::LogGroup" or lg["Properties"].get("RetentionInDays") != {"Ref": "LogRetentionDays"}:
            problems.append(f"{lid}: LoggingConfig.LogGroup must be an explicit log group with RetentionInDays Ref LogRetentionDays")
        env = set((p.get("Environment") or {}).get("Variables") or {})
        if env_keys - env:
            problems.append(f"{lid}: missing env {sorted(env_keys - env)}")
        if env & REMOVED_ENV:
            problems.append(f"{lid}: env {sorted(env & REMOVED_ENV)} is gone from the code")
    if param_default(tpl, "ProcessorMemorySize") != 256:
        problems.append("ProcessorMemorySize default must be 256")
    problems.extend(check_schedules(tpl, raw))
    if param_default(tpl, "ReceiverTimeout") is not None and not param_default(tpl, "ReceiverTimeout") < 5:
        problems.append("receiver timeout default must stay under WorkOS's 5 s")
    if param_default(tpl, "LogRetentionDays") != 30:
        problems.append("LogRetentionDays default must be 30")
    return problems


def check_schedules(tpl, raw):
    """The poller and the scheduler each run on one EventBridge Scheduler schedule from a parameter."""
    problems = []
    for binary, param, default in SCHEDULES:
        lid, fn = function_by_bin(tpl, binary)
        if not fn:
            continue
        if param_default(tpl, param) != default:
            problems.append(f"{param} must default to {default}")
        if raw:
            evs = [e for e in ((fn.get("Properties") or {}).get("Events") or {}).values()]
            if len(evs) != 1 or evs[0].get("Type") != "ScheduleV2" or \
                    evs[0].get("Properties", {}).get("ScheduleExpression") != {"Ref": param}:
                problems.append(f"{lid}: needs exactly one ScheduleV2 event with ScheduleExpression Ref {param}")
        else:
            schedules = [r["Properties"] for r in resources(tpl, "AWS::Scheduler::Schedule").values()
                         if ref_target(r["Properties"].get("Target", {}).get("Arn")) == lid]
            if len(schedules) != 1 or schedules[0].get("ScheduleExpression") != {"Ref": param}:
                problems.append(f"{lid}: expected one AWS::Scheduler::Schedule from {param}, found {schedules}")
    return problems


def check_queue(tpl, raw):
    problems = []
    res = tpl["Resources"]
    params = tpl.get("Parameters", {})
    pid, pfn = function_by_bin(tpl, PROCESSOR_BIN)
    _, rfn = function_by_bin(tpl, RECEIVER_BIN)
    queue_id = ref_target((rfn or {}).get("Properties", {}).get("Environment", {}).get("Variables", {})
                          .get("EVENTS_QUEUE_URL")) or "(receiver EVENTS_QUEUE_URL)"
    q = res.get(queue_id, {}).get("Properties", {})
    dlq_id = ref_target(q.get("RedrivePolicy", {}).get("deadLetterTargetArn"))
    dlq = res.get(dlq_id or "", {}).get("Properties", {})
    for name, props in ((queue_id, q), (dlq_id, dlq)):
        if props.get("SqsManagedSseEnabled") is not True:
            problems.append(f"queue {name}: SqsManagedSseEnabled must be true")
    if dlq.get("MessageRetentionPeriod") != 1209600:
        problems.append("DLQ MessageRetentionPeriod must be 1209600 (14 days)")
    mrc = q.get("RedrivePolicy", {}).get("maxReceiveCount")
    if ref_target(mrc) not in params or param_default(tpl, ref_target(mrc)) != 20:
        problems.append("RedrivePolicy.maxReceiveCount must be a parameter defaulting to 20 (deferred events come back)")
    # visibility >= 6 x processor timeout, on the defaults and for every allowed pair (Rules table)
    vis_param = ref_target(q.get("VisibilityTimeout"))
    t_param = ref_target((pfn or {}).get("Properties", {}).get("Timeout"))
    vis_default, t_default = param_default(tpl, vis_param), param_default(tpl, t_param)
    if vis_default is None or t_default is None or vis_default < 6 * t_default:
        problems.append(f"queue VisibilityTimeout default {vis_default} < 6 x processor timeout default {t_default}")
    if raw and vis_param and t_param:
        problems.extend(check_visibility_rule(tpl, vis_param, t_param))
        chunk = ref_target(((pfn or {}).get("Properties", {}).get("Environment", {}).get("Variables", {}))
                           .get("CHUNK_SECONDS"))
        if not chunk or param_default(tpl, chunk) != 25:
            problems.append("CHUNK_SECONDS must Ref a parameter defaulting to 25")
        else:
            problems.extend(check_table_rule(tpl, chunk, t_param, lambda c, t: 2 * c <= t))
    # the SQS event source
    evs = [e for e in ((pfn or {}).get("Properties", {}).get("Events") or {}).values() if e.get("Type") == "SQS"]
    esms = [r["Properties"] for r in resources(tpl, "AWS::Lambda::EventSourceMapping").values()
            if ref_target(r["Properties"].get("FunctionName")) == pid]
    sources = [e["Properties"] for e in evs] if raw else esms
    if len(sources) != 1:
        problems.append(f"expected one SQS event source on the processor, found {len(sources)}")
    for s in sources:
        if ref_target(s.get("Queue") or s.get("EventSourceArn")) != queue_id:
            problems.append("processor event source is not the events queue")
        if "ReportBatchItemFailures" not in as_list(s.get("FunctionResponseTypes")):
            problems.append("processor SQS event lacks FunctionResponseTypes [ReportBatchItemFailures]")
        for key, default in (("BatchSize", 10), ("MaximumBatchingWindowInSeconds", 1)):
            if param_default(tpl, ref_target(s.get(key))) != default:
                problems.append(f"processor SQS event {key} must be a parameter defaulting to {default}")
        mc = ref_target((s.get("ScalingConfig") or {}).get("MaximumConcurrency"))
        if param_default(tpl, mc) != 20 or params.get(mc, {}).get("MinValue", 0) < 2:
            problems.append("ScalingConfig.MaximumConcurrency must be a parameter, default 20, MinValue 2")
    return problems


def check_visibility_rule(tpl, vis_param, t_param):
    """Rules must map each allowed processor timeout to exactly the allowed visibility values >= 6x."""
    return check_table_rule(tpl, vis_param, t_param, lambda v, t: v >= 6 * t)


def check_table_rule(tpl, vis_param, t_param, ok):
    """Rules must map each allowed processor timeout t to exactly the allowed values v with ok(v, t)."""
    problems = []
    params = tpl["Parameters"]
    t_allowed = params[t_param].get("AllowedValues")
    v_allowed = params[vis_param].get("AllowedValues")
    if not t_allowed or not v_allowed:
        return [f"{t_param}/{vis_param} need AllowedValues for their Rule"]
    found = {}
    for rule in (tpl.get("Rules") or {}).values():
        for a in rule.get("Assertions", []):
            parts = a.get("Assert", {}).get("Fn::Or", [])
            if len(parts) != 2:
                continue
            eq = parts[0].get("Fn::Not", [{}])[0].get("Fn::Equals", [])
            contains = parts[1].get("Fn::Contains", [])
            if eq[:1] == [{"Ref": t_param}] and contains[1:] == [{"Ref": vis_param}]:
                found[int(eq[1])] = sorted(int(x) for x in contains[0])
    for t in t_allowed:
        want = sorted(v for v in v_allowed if ok(v, t))
        if found.get(t) != want:
            problems.append(f"Rules: for {t_param}={t} the allowed {vis_param} must be {want}, found {found.get(t)}")
    return problems


def check_tables(tpl):
    problems = []
    pid, pfn = function_by_bin(tpl, PROCESSOR_BIN)
    env = (pfn or {}).get("Properties", {}).get("Environment", {}).get("Variables", {})
    events = tpl["Resources"].get(ref_target(env.get("EVENTS_TABLE")) or "", {}).get("Properties")
    state = tpl["Resources"].get(ref_target(env.get("STATE_TABLE")) or "", {}).get("Properties")
    if not events or not state:
        return ["EVENTS_TABLE / STATE_TABLE must Ref the two tables"]

    def keys(ks):
        return [(k["AttributeName"], k["KeyType"]) for k in ks]

    def attrs(t):
        return {a["AttributeName"]: a["AttributeType"] for a in t.get("AttributeDefinitions", [])}

    if keys(events.get("KeySchema", [])) != [("event_id", "HASH")] or attrs(events) != {"event_id": "S"}:
        problems.append("EventsTable key schema must be HASH event_id (S)")
    ttl = events.get("TimeToLiveSpecification", {})
    if ttl != {"AttributeName": "expires_at", "Enabled": True}:
        problems.append(f"EventsTable TTL must be enabled on expires_at, got {ttl}")
    if keys(state.get("KeySchema", [])) != [("pk", "HASH"), ("sk", "RANGE")]:
        problems.append("StateTable key schema must be HASH pk, RANGE sk")
    if attrs(state) != {"pk": "S", "sk": "S"}:
        problems.append(f"StateTable attribute definitions wrong: {attrs(state)}")
    if state.get("GlobalSecondaryIndexes") or state.get("LocalSecondaryIndexes"):
        problems.append("StateTable must have no index (every read is a consistent read of the base table)")
    if state.get("TimeToLiveSpecification", {}) != {"AttributeName": "expires_at", "Enabled": True}:
        problems.append(f"StateTable TTL must be enabled on expires_at, got {state.get('TimeToLiveSpecification')}")
    for name, t in (("EventsTable", events), ("StateTable", state)):
        if t.get("BillingMode") != "PAY_PER_REQUEST":
            problems.append(f"{name}: BillingMode must be PAY_PER_REQUEST")
        if t.get("SSESpecification", {}).get("SSEEnabled") is not True:
            problems.append(f"{name}: SSE must be enabled")
        if t.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") is not True:
            problems.append(f"{name}: point-in-time recovery must be enabled")
    return problems


def check_api_and_alarms(tpl):
    problems = []
    res = tpl["Resources"]
    routes = [r["Properties"] for r in resources(tpl, "AWS::ApiGatewayV2::Route").values()]
    want = {"Fn::If": ["HasPathToken", "POST /webhooks/workos/{token}", "POST /webhooks/workos"]}
    if [r.get("RouteKey") for r in routes] != [want]:
        problems.append(f"expected one route with RouteKey {want}")
    cond = json.dumps(tpl.get("Conditions", {}).get("HasPathToken"))
    if '"Ref": "WebhookPathToken"' not in cond or "Fn::Not" not in cond:
        problems.append("Condition HasPathToken must test WebhookPathToken != ''")
    stages = [r["Properties"] for r in resources(tpl, "AWS::ApiGatewayV2::Stage").values()]
    if not stages or not all(s.get("AccessLogSettings", {}).get("DestinationArn") and
                             s.get("DefaultRouteSettings", {}).get("ThrottlingRateLimit") and
                             s.get("DefaultRouteSettings", {}).get("ThrottlingBurstLimit") for s in stages):
        problems.append("HTTP API stage needs access logging and default throttling")
    rid, _ = function_by_bin(tpl, RECEIVER_BIN)
    _, rfn = function_by_bin(tpl, RECEIVER_BIN)
    rlog = ref_target(((rfn or {}).get("Properties", {}).get("LoggingConfig") or {}).get("LogGroup"))
    filters = [r["Properties"] for r in resources(tpl, "AWS::Logs::MetricFilter").values()
               if ref_target(r["Properties"].get("LogGroupName")) == rlog]
    problems.extend(check_rejected_filter(filters))
    alarms = [r["Properties"] for r in resources(tpl, "AWS::CloudWatch::Alarm").values()]

    def has_alarm(metric, ns=None, threshold=None):
        return any(a.get("MetricName") == metric and (ns is None or a.get("Namespace") == ns)
                   and (threshold is None or a.get("Threshold") == threshold) for a in alarms)

    if not has_alarm("ApproximateNumberOfMessagesVisible", "AWS/SQS", 0):
        problems.append("DLQ depth alarm missing")
    if not has_alarm("ApproximateAgeOfOldestMessage", "AWS/SQS") or param_default(tpl, "QueueAgeAlarmSeconds") != 600:
        problems.append("queue age alarm (parameter default 600 s) missing")
    if not any(a.get("MetricName") == "Errors" and a.get("Period") == 300 and a.get("Threshold") == 0 and
               ref_target(a.get("Dimensions", [{}])[0].get("Value")) == function_by_bin(tpl, PROCESSOR_BIN)[0]
               for a in alarms):
        problems.append("processor Errors > 0 over 5 minutes alarm missing")
    if not any(a.get("MetricName") in {f["MetricTransformations"][0]["MetricName"] for f in filters} for a in alarms):
        problems.append("alarm on the rejected-webhook metric missing")
    for binary, periods in ((POLLER_BIN, 3), (SCHEDULER_BIN, 1)):
        fid = function_by_bin(tpl, binary)[0]
        if not any(a.get("MetricName") == "Errors" and a.get("Threshold") == 0 and a.get("EvaluationPeriods") == periods
                   and a.get("DatapointsToAlarm", periods) == periods
                   and ref_target(a.get("Dimensions", [{}])[0].get("Value")) == fid for a in alarms):
            problems.append(f"{binary} Errors alarm ({periods} of {periods} periods) missing")
    _, pfn = function_by_bin(tpl, PROCESSOR_BIN)
    plog = own_log_group(pfn or {})
    pfilters = [r["Properties"] for r in resources(tpl, "AWS::Logs::MetricFilter").values()
                if ref_target(r["Properties"].get("LogGroupName")) == plog]
    problems.extend(check_differences_filter(pfilters))
    diff_alarms = [a for a in alarms if a.get("MetricName") == "ReconcileDifferences"]
    if len(diff_alarms) != 1 or diff_alarms[0].get("Period") != 3600 or diff_alarms[0].get("EvaluationPeriods") != 6 \
            or diff_alarms[0].get("Threshold") != 0 or ref_target(diff_alarms[0].get("DatapointsToAlarm")) is None \
            or param_default(tpl, ref_target(diff_alarms[0].get("DatapointsToAlarm"))) != 3:
        problems.append("ReconcileDifferences alarm must be > 0 in DatapointsToAlarm (default 3) of 6 hourly periods")
    _, wfn = function_by_bin(tpl, POLLER_BIN)
    wlog = own_log_group(wfn or {})
    expired = [r["Properties"] for r in resources(tpl, "AWS::Logs::MetricFilter").values()
               if ref_target(r["Properties"].get("LogGroupName")) == wlog
               and r["Properties"].get("FilterPattern", "").replace(" ", "") == "{$.fields.cursor_expired IS TRUE}".replace(" ", "")]
    if len(expired) != 1 or not has_alarm(expired[0]["MetricTransformations"][0]["MetricName"]):
        problems.append("EventsCursorExpired filter ({ $.fields.cursor_expired IS TRUE }) on the poller log group and its alarm missing")
    for a in alarms:
        if a.get("AlarmActions") != {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}:
            problems.append(f"alarm {a.get('MetricName')} must use the optional AlarmTopicArn (Condition HasAlarmTopic)")
    for out in ("WebhookUrl", "QueueUrl", "DlqUrl", "EventsTableName", "StateTableName",
                "EventsPollerLogGroupName", "SchedulerLogGroupName"):
        if out not in tpl.get("Outputs", {}):
            problems.append(f"output {out} missing")
    return problems


# What the rejected-webhook filter must count: every request from a caller without the secret.
# The receiver logs these as (Outcome::log_fields in shared/src/receiver/mod.rs, unit-tested there):
REJECTED_FILTER_TERMS = {
    "401 signature": '$.fields.outcome = "rejected"',
    "refusals": '$.fields.outcome = "refused"',
    "403 source IP": "$.fields.status = 403",
    "404 path token": "$.fields.status = 404",
}


def check_rejected_filter(filters):
    """A cheap guard against drift between the filter, its comment/alarm and the receiver's log fields."""
    patterns = [f.get("FilterPattern", "") for f in filters
                if any(t.get("MetricName") == "WebhookRejected" for t in f.get("MetricTransformations", []))]
    if len(patterns) != 1:
        return [f"expected one WebhookRejected metric filter on the receiver log group, found {len(patterns)}"]
    pattern = " ".join(patterns[0].split())
    problems = [f"WebhookRejected filter does not count {case} ({term!r} missing): {pattern}"
                for case, term in REJECTED_FILTER_TERMS.items() if term not in pattern]
    statuses = set(re.findall(r"\$\.fields\.status\s*=\s*(\d+)", pattern))
    if statuses - {"403", "404"}:
        problems.append(f"WebhookRejected filter counts statuses {sorted(statuses - {'403', '404'})} "
                        "that callers holding the secret also get")
    if not pattern.startswith("{") or not pattern.endswith("}") or "||" not in pattern:
        problems.append(f"WebhookRejected filter is not one JSON pattern with ||: {pattern}")
    return problems


# What the ReconcileDifferences filter must say: the engine's `job finished` line (fields under
# "fields"; `initial` a JSON boolean, `differences` a number), reconciles only, initial ones left out.
# tests/tests/scheduler.rs reads the captured log line exactly this way.
DIFFERENCES_FILTER_TERMS = {
    "the job finished line": '$.fields.message = "job finished"',
    "reconciles only": '$.fields.kind = "reconcile"',
    "no initial sync": "$.fields.initial IS FALSE",
}


def check_differences_filter(filters):
    found = [f for f in filters
             if any(t.get("MetricName") == "ReconcileDifferences" for t in f.get("MetricTransformations", []))]
    if len(found) != 1:
        return [f"expected one ReconcileDifferences metric filter on the processor log group, found {len(found)}"]
    pattern = " ".join(found[0].get("FilterPattern", "").split())
    problems = [f"ReconcileDifferences filter lacks {case} ({term!r}): {pattern}"
                for case, term in DIFFERENCES_FILTER_TERMS.items() if term not in pattern]
    if "||" in pattern or not pattern.startswith("{") or not pattern.endswith("}"):
        problems.append(f"ReconcileDifferences filter must be one JSON pattern of && terms: {pattern}")
    value = found[0]["MetricTransformations"][0].get("MetricValue")
    if value != "$.fields.differences":
        problems.append(f"ReconcileDifferences must count $.fields.differences, not {value!r}")
    return problems


def check_template(tpl, text=None):
    """All checks on the raw (unexpanded) SAM template."""
    problems = check_text(text) if text is not None else []
    if text is not None and "later additions (reserved)" in text:
        problems.append("the reserved-additions comment must go: the poller and scheduler are real")
    if tpl.get("Transform") != "AWS::Serverless-2016-10-31":
        problems.append("Transform must be AWS::Serverless-2016-10-31")
    for fn in (check_iam, check_secrets, check_tables, check_api_and_alarms):
        problems += fn(tpl)
    problems += check_lambda_settings(tpl, raw=True) + check_queue(tpl, raw=True)
    return problems


def check_expanded(exp):
    """Checks on the CloudFormation that SAM generates (what is actually deployed)."""
    problems = [f"{k}: unexpanded {r['Type']}" for k, r in exp["Resources"].items()
                if r["Type"].startswith("AWS::Serverless::")]
    problems += check_iam(exp) + check_secrets(exp) + check_tables(exp)
    problems += check_lambda_settings(exp, raw=False) + check_queue(exp, raw=False)
    return problems


# ----------------------------------------------------------------------------- loading
@functools.lru_cache(maxsize=None)
def _text():
    with open(TEMPLATE) as f:
        return f.read()


def template():
    return yaml.safe_load(_text())


def expand_dict(tpl):
    import sam_expand
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "template.json")
        with open(path, "w") as f:
            json.dump(tpl, f)
        return sam_expand.expand(path)


@functools.lru_cache(maxsize=None)
def _expanded_json():
    path = os.environ.get("INFRA_EXPANDED")
    if path:
        with open(path) as f:
            return f.read()
    import sam_expand
    return json.dumps(sam_expand.expand(TEMPLATE))


def expanded():
    return json.loads(_expanded_json())


def role_statements(tpl, binary):
    _, fn = function_by_bin(tpl, binary)
    role = tpl["Resources"][role_of(fn)]
    return role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


def assert_flags(problems, needle):
    assert any(needle in p for p in problems), f"expected a problem containing {needle!r}, got {problems}"


# ----------------------------------------------------------------------------- tests: the real template
def test_template_is_plain_yaml_and_passes():
    problems = check_template(template(), _text())
    assert problems == [], "\n".join(problems)


def test_expanded_template_passes():
    problems = check_expanded(expanded())
    assert problems == [], "\n".join(problems)


def test_expanded_keeps_batch_failures_and_roles():
    exp = expanded()
    esms = [r for r in exp["Resources"].values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert [e["Properties"]["FunctionResponseTypes"] for e in esms] == [["ReportBatchItemFailures"]]
    roles = {k: r for k, r in exp["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    assert not any(r["Properties"].get("ManagedPolicyArns") for r in roles.values())
    fn_roles = {role_of(fn) for fn in resources(exp, *FUNCTION_TYPES).values()}
    assert len(fn_roles) == 4, fn_roles
    schedule_roles = {ref_target(r["Properties"]["Target"]["RoleArn"])
                      for r in resources(exp, "AWS::Scheduler::Schedule").values()}
    assert len(schedule_roles) == 2 and set(roles) == fn_roles | schedule_roles, sorted(roles)


def test_every_function_is_built_by_infra_check():
    """scripts/infra-check.sh builds the bins it finds in the template: all four, each a workspace member."""
    bins = sorted(fn["Metadata"]["BuildProperties"]["Binary"] for fn in resources(template(), *FUNCTION_TYPES).values())
    assert bins == sorted([RECEIVER_BIN, PROCESSOR_BIN, POLLER_BIN, SCHEDULER_BIN])
    with open(os.path.join(REPO, "Cargo.toml")) as f:
        members = f.read()
    for b in bins:
        assert f'"functions/{b}"' in members, b
    with open(os.path.join(REPO, "scripts", "infra-check.sh")) as f:
        script = f.read()
    assert "template_bins" in script and "--bin webhook-receiver --bin event-processor" not in script


# ----------------------------------------------------------------------------- tests: the checker can fail
def test_negative_star_resource():
    t = template()
    role_statements(t, PROCESSOR_BIN)[0]["Resource"].append("*")
    assert_flags(check_iam(t), "wildcard Resource '*'")


def test_negative_partial_star_resource():
    t = template()
    role_statements(t, PROCESSOR_BIN)[0]["Resource"] = [
        {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/*"}]
    assert_flags(check_iam(t), "wildcard Resource")


def test_negative_log_suffix_only_for_logs():
    t = template()
    st = role_statements(t, PROCESSOR_BIN)[0]
    st["Resource"] = [{"Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:x:*"}]
    assert_flags(check_iam(t), "wildcard Resource")
    t = template()
    log_st = [s for s in role_statements(t, RECEIVER_BIN) if "logs:PutLogEvents" in s["Action"]][0]
    log_st["Resource"] = [{"Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:*"}]
    assert_flags(check_iam(t), "wildcard Resource")


def test_negative_wildcard_actions():
    for action in ("sqs:*", "dynamodb:*", "*", "dynamodb:Get*"):
        t = template()
        role_statements(t, PROCESSOR_BIN)[0]["Action"].append(action)
        assert_flags(check_iam(t), f"wildcard Action {action!r}")


def test_negative_receiver_extra_action():
    t = template()
    role_statements(t, RECEIVER_BIN)[0]["Action"].append("sqs:ReceiveMessage")
    assert_flags(check_iam(t), "receiver role has actions beyond")
    t = template()
    role_statements(t, RECEIVER_BIN).append(
        {"Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": {"Fn::GetAtt": ["EventsTable", "Arn"]}})
    assert_flags(check_iam(t), "receiver role has actions beyond")


def test_negative_managed_policy_and_sam_policy_template():
    t = template()
    _, fn = function_by_bin(t, RECEIVER_BIN)
    t["Resources"][role_of(fn)]["Properties"]["ManagedPolicyArns"] = [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]
    assert_flags(check_iam(t), "ManagedPolicyArns")
    t = template()
    _, fn = function_by_bin(t, PROCESSOR_BIN)
    fn["Properties"]["Policies"] = [{"SQSPollerPolicy": {"QueueName": "x"}}]
    assert_flags(check_iam(t), "opaque to this check")


def test_negative_expanded_default_role_is_flagged():
    """Without an explicit Role SAM generates one with AWSLambdaBasicExecutionRole: the expanded check must see it."""
    t = template()
    _, fn = function_by_bin(t, RECEIVER_BIN)
    del fn["Properties"]["Role"]
    assert_flags(check_iam(t), "without an explicit Role")
    assert_flags(check_expanded(expand_dict(t)), "ManagedPolicyArns")


def test_negative_secret_values_in_env():
    # A literal value.
    t = template()
    _, fn = function_by_bin(t, PROCESSOR_BIN)
    fn["Properties"]["Environment"]["Variables"]["WORKOS_API_KEY"] = "sk_test_123"
    assert_flags(check_secrets(t), "env WORKOS_API_KEY carries a secret value")
    # The old way: a dynamic reference resolved into the environment, under any variable name.
    for name in ("WORKOS_WEBHOOK_SECRET", "WORKOS_WEBHOOK_SECRET_ARN", "SOME_SETTING"):
        t = template()
        _, fn = function_by_bin(t, RECEIVER_BIN)
        fn["Properties"]["Environment"]["Variables"][name] = {
            "Fn::Sub": "{{resolve:secretsmanager:${WebhookSecretArn}:SecretString}}"}
        assert_flags(check_secrets(t), f"env {name} uses a {{{{resolve:...}}}} dynamic reference")
    # A NoEcho parameter carrying the value.
    t = template()
    _, fn = function_by_bin(t, RECEIVER_BIN)
    t["Parameters"]["WebhookSecret"] = {"Type": "String", "NoEcho": True}
    fn["Properties"]["Environment"]["Variables"]["WORKOS_WEBHOOK_SECRET"] = {"Ref": "WebhookSecret"}
    problems = check_secrets(t)
    assert_flags(problems, "env WORKOS_WEBHOOK_SECRET carries a secret value")
    assert_flags(problems, "parameter WebhookSecret")
    # A secret-looking variable that is not an ARN variable, and an ARN variable holding a literal.
    t = template()
    _, fn = function_by_bin(t, PROCESSOR_BIN)
    fn["Properties"]["Environment"]["Variables"]["STRIPE_API_KEY"] = "sk_live_1"
    fn["Properties"]["Environment"]["Variables"]["WORKOS_API_KEY_SECRET_ARN"] = "sk_test_123"
    problems = check_secrets(t)
    assert_flags(problems, "env STRIPE_API_KEY looks like a secret value")
    assert_flags(problems, "env WORKOS_API_KEY_SECRET_ARN must Ref a secret-ARN parameter")
    # The ARN parameter must be checked as an ARN.
    t = template()
    del t["Parameters"]["ApiKeySecretArn"]["AllowedPattern"]
    assert_flags(check_secrets(t), "without a Secrets Manager ARN AllowedPattern")


def test_negative_secret_permissions():
    def secret_stmt(t, binary):
        return [s for s in role_statements(t, binary) if "secretsmanager:GetSecretValue" in s["Action"]][0]

    # Wildcards: every secret, a partial name with "*" or "?".
    for res in ("*",
                {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:*"},
                {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:dsync/x-??????"}):
        t = template()
        secret_stmt(t, RECEIVER_BIN)["Resource"] = [res]
        assert_flags(check_iam(t), "wildcard Resource")
    # The other function's secret, or both.
    t = template()
    secret_stmt(t, RECEIVER_BIN)["Resource"] = [{"Ref": "ApiKeySecretArn"}]
    assert_flags(check_iam(t), "receiver secretsmanager:GetSecretValue resources ['${ApiKeySecretArn}']")
    t = template()
    secret_stmt(t, PROCESSOR_BIN)["Resource"].append({"Ref": "WebhookSecretArn"})
    assert_flags(check_iam(t), "processor secretsmanager:GetSecretValue resources")
    # More than GetSecretValue, or it missing.
    t = template()
    secret_stmt(t, PROCESSOR_BIN)["Action"].append("secretsmanager:PutSecretValue")
    problems = check_iam(t)
    assert_flags(problems, "processor secret statement mixes actions")
    assert_flags(problems, "processor role has unexpected actions: ['secretsmanager:PutSecretValue']")
    t = template()
    stmts = role_statements(t, RECEIVER_BIN)
    stmts.remove(secret_stmt(t, RECEIVER_BIN))
    assert_flags(check_iam(t), "receiver role lacks secretsmanager:GetSecretValue")
    t = template()
    stmts = role_statements(t, PROCESSOR_BIN)
    stmts.remove(secret_stmt(t, PROCESSOR_BIN))
    assert_flags(check_iam(t), "processor role lacks: ['secretsmanager:GetSecretValue']")


def test_negative_rejected_filter_drift():
    def filt(t):
        return t["Resources"]["WebhookRejectedMetricFilter"]["Properties"]

    cases = {
        '{ $.fields.outcome = "rejected" }': ["403 source IP", "404 path token", "refusals"],
        '{ ($.fields.outcome = "rejected") || ($.fields.outcome = "refused" && $.fields.status = 403) }':
            ["404 path token"],
        '{ ($.fields.outcome = "refused" && ($.fields.status = 403 || $.fields.status = 404)) }': ["401 signature"],
    }
    for pattern, missing in cases.items():
        t = template()
        filt(t)["FilterPattern"] = pattern
        problems = check_api_and_alarms(t)
        for case in missing:
            assert_flags(problems, f"does not count {case}")
    t = template()
    filt(t)["FilterPattern"] = ('{ ($.fields.outcome = "rejected") || ($.fields.outcome = "refused" && '
                                '($.fields.status = 403 || $.fields.status = 404 || $.fields.status = 400)) }')
    assert_flags(check_api_and_alarms(t), "counts statuses ['400']")


def test_negative_queue_and_event_source():
    t = template()
    t["Parameters"]["QueueVisibilityTimeout"]["Default"] = 300
    assert_flags(check_queue(t, raw=True), "VisibilityTimeout default 300")
    t = template()
    t["Rules"]["VisibilityTimeoutRule"]["Assertions"][2]["Assert"]["Fn::Or"][1]["Fn::Contains"][0].insert(0, "180")
    assert_flags(check_queue(t, raw=True), "Rules: for ProcessorTimeout=60")
    t = template()
    _, fn = function_by_bin(t, PROCESSOR_BIN)
    next(iter(fn["Properties"]["Events"].values()))["Properties"]["FunctionResponseTypes"] = []
    assert_flags(check_queue(t, raw=True), "ReportBatchItemFailures")
    exp = expanded()
    for r in exp["Resources"].values():
        if r["Type"] == "AWS::Lambda::EventSourceMapping":
            del r["Properties"]["FunctionResponseTypes"]
    assert_flags(check_queue(exp, raw=False), "ReportBatchItemFailures")


def test_negative_tables():
    t = template()
    t["Resources"]["EventsTable"]["Properties"]["TimeToLiveSpecification"]["AttributeName"] = "ttl"
    t["Resources"]["StateTable"]["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] = False
    t["Resources"]["StateTable"]["Properties"]["GlobalSecondaryIndexes"] = [{
        "IndexName": "gsi1", "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "ALL"}}]
    del t["Resources"]["StateTable"]["Properties"]["TimeToLiveSpecification"]
    problems = check_tables(t)
    for needle in ("EventsTable TTL must be enabled on expires_at", "point-in-time", "must have no index",
                   "StateTable TTL must be enabled on expires_at"):
        assert_flags(problems, needle)
    # The processor may not query an index any more.
    t = template()
    role_statements(t, PROCESSOR_BIN)[0]["Resource"].append({"Fn::Sub": "${StateTable.Arn}/index/gsi1"})
    assert_flags(check_iam(t), "is not one of the two tables")


def test_negative_worker_permissions():
    def stmt(t, binary, prefix):
        return [s for s in role_statements(t, binary) if any(a.startswith(prefix) for a in s["Action"])][0]

    # More DynamoDB than it uses, or another table.
    t = template()
    stmt(t, POLLER_BIN, "dynamodb:")["Action"].append("dynamodb:DeleteItem")
    assert_flags(check_iam(t), "events-poller role has unexpected actions: ['dynamodb:DeleteItem']")
    t = template()
    stmt(t, SCHEDULER_BIN, "dynamodb:")["Action"].append("dynamodb:PutItem")
    assert_flags(check_iam(t), "scheduler role has unexpected actions: ['dynamodb:PutItem']")
    t = template()
    stmt(t, SCHEDULER_BIN, "dynamodb:")["Resource"].append({"Fn::GetAtt": ["EventsTable", "Arn"]})
    assert_flags(check_iam(t), "scheduler DynamoDB resources")
    # Consuming the queue, another queue, the webhook secret, a missing grant.
    t = template()
    stmt(t, POLLER_BIN, "sqs:")["Action"].append("sqs:ReceiveMessage")
    assert_flags(check_iam(t), "events-poller role has unexpected actions: ['sqs:ReceiveMessage']")
    t = template()
    stmt(t, POLLER_BIN, "sqs:")["Resource"] = [{"Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]}]
    assert_flags(check_iam(t), "events-poller sqs:SendMessage resources")
    t = template()
    stmt(t, SCHEDULER_BIN, "secretsmanager:")["Resource"] = [{"Ref": "WebhookSecretArn"}]
    assert_flags(check_iam(t), "scheduler secretsmanager:GetSecretValue resources")
    t = template()
    role_statements(t, SCHEDULER_BIN).remove(stmt(t, SCHEDULER_BIN, "sqs:"))
    assert_flags(check_iam(t), "scheduler role lacks: ['sqs:SendMessage']")
    # A shared role.
    t = template()
    _, fn = function_by_bin(t, SCHEDULER_BIN)
    fn["Properties"]["Role"] = {"Fn::GetAtt": ["EventsPollerRole", "Arn"]}
    assert_flags(check_iam(t), "every function needs its own role")
    # A generated schedule role with more than invoking its function.
    exp = expanded()
    sid, sch = next(iter(resources(exp, "AWS::Scheduler::Schedule").items()))
    role = exp["Resources"][ref_target(sch["Properties"]["Target"]["RoleArn"])]
    role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]["Action"] = ["lambda:InvokeFunction", "lambda:UpdateFunctionCode"]
    assert_flags(check_iam(exp), f"{sid}: schedule role")


def test_negative_schedules_and_settings():
    t = template()
    t["Parameters"]["EventsPollerSchedule"]["Default"] = "rate(1 hour)"
    assert_flags(check_lambda_settings(t, raw=True), "EventsPollerSchedule must default to rate(1 minute)")
    t = template()
    _, fn = function_by_bin(t, SCHEDULER_BIN)
    fn["Properties"]["Events"]["Schedule"]["Type"] = "Schedule"
    assert_flags(check_lambda_settings(t, raw=True), "exactly one ScheduleV2 event")
    t = template()
    _, fn = function_by_bin(t, PROCESSOR_BIN)
    fn["Properties"]["Environment"]["Variables"]["STORE_CONCURRENCY"] = "8"
    del fn["Properties"]["Environment"]["Variables"]["CHUNK_SECONDS"]
    problems = check_lambda_settings(t, raw=True)
    assert_flags(problems, "['STORE_CONCURRENCY'] is gone")
    assert_flags(problems, "missing env ['CHUNK_SECONDS']")
    t = template()
    t["Parameters"]["MaxReceiveCount"]["Default"] = 5
    t["Parameters"]["MaximumConcurrency"]["Default"] = 2
    problems = check_queue(t, raw=True)
    assert_flags(problems, "maxReceiveCount must be a parameter defaulting to 20")
    assert_flags(problems, "MaximumConcurrency must be a parameter, default 20")
    t = template()
    t["Rules"]["ChunkRule"]["Assertions"][2]["Assert"]["Fn::Or"][1]["Fn::Contains"][0].append("45")
    assert_flags(check_queue(t, raw=True), "Rules: for ProcessorTimeout=60 the allowed ProcessorChunkSeconds")
    assert_flags(check_template(template(), _text() + "\n# later additions (reserved)\n"), "reserved-additions")


def test_negative_differences_filter_drift():
    def filt(t):
        return t["Resources"]["ReconcileDifferencesMetricFilter"]["Properties"]

    cases = {
        '{ $.fields.message = "job finished" && $.fields.kind = "reconcile" }': "no initial sync",
        '{ $.fields.message = "job finished" && $.fields.initial IS FALSE }': "reconciles only",
        '{ $.fields.kind = "reconcile" && $.fields.initial = "false" }': "the job finished line",
    }
    for pattern, missing in cases.items():
        t = template()
        filt(t)["FilterPattern"] = pattern
        assert_flags(check_api_and_alarms(t), f"lacks {missing}")
    t = template()
    filt(t)["MetricTransformations"][0]["MetricValue"] = "1"
    assert_flags(check_api_and_alarms(t), "must count $.fields.differences")
    t = template()
    t["Resources"]["ReconcileDifferencesAlarm"]["Properties"]["EvaluationPeriods"] = 1
    assert_flags(check_api_and_alarms(t), "ReconcileDifferences alarm")
    t = template()
    del t["Resources"]["EventsPollerErrorsAlarm"]
    assert_flags(check_api_and_alarms(t), "events-poller Errors alarm")


def test_negative_short_tags():
    assert_flags(check_text("Value: !Ref EventsQueue\n"), "short-form intrinsic tag")
    assert_flags(check_text("Arn: [!GetAtt Q.Arn]\n"), "short-form intrinsic tag")


# ----------------------------------------------------------------------------- plain-script mode
def main():
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"PASS {name}")
        except Exception as e:  # noqa: BLE001 - report every failure
            failed += 1
            print(f"FAIL {name}: {e}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
