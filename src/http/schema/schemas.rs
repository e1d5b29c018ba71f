//! Upstream's schemas as data (`server/src/testflinger/api/schemas.py`, canonical/testflinger
//! fe381ff2): `Job` with its nested `TestData`, `ReserveData` and `Attachment`, and the 13
//! device connectors' `provision_data` schemas with their whole-object checks. What the
//! tables mean is in the parent module; how they are walked is in `validate.rs`.

use serde_json::Value;

use super::super::wire::{MAX_LIST, MAX_NAME};
use super::{schema, Field, Kind, Lookup, Pattern, Schema, Unknown};
use Kind::*;

/// `Attachment`: where an attached file goes on the agent and on the device.
pub static ATTACHMENT: Schema = schema(
    "Attachment",
    &[Field::req("agent", Str), Field::opt("device", Str)],
);

const ATTACHMENTS: Kind = List(&Nested(&ATTACHMENT));

/// `TestData`.
pub static TEST_DATA: Schema = schema(
    "TestData",
    &[
        Field::opt("test_cmds", Str),
        Field::opt("attachments", ATTACHMENTS),
        Field::opt("test_username", Str),
        Field::opt("test_password", Str),
        Field::opt("secrets", DictOf(Pattern::SecretName, Pattern::SecretPath)),
    ],
);

/// `ReserveData`.
pub static RESERVE_DATA: Schema = schema(
    "ReserveData",
    &[
        Field::opt("ssh_keys", List(&Matching(Pattern::SshKey))),
        Field::opt("timeout", Duration).nullable(),
    ],
);

/// `ProvisionLogsIn`, the body of `POST /v1/agents/provision_logs/<name>` (the stock
/// agent sends exactly these three keys).
pub static PROVISION_LOG: Schema = schema(
    "ProvisionLogsIn",
    &[
        Field::req("job_id", Str),
        Field::req("exit_code", Int),
        Field::opt("detail", Str),
    ],
);

/// `Job`, as flinger keeps it: unknown top-level keys are kept.
pub static JOB: Schema = Schema {
    name: "Job",
    fields: &[
        // Nullable (unlike upstream): `null`, like `""`, asks for a new id, as the original
        // server did; a value of another type is refused with upstream's 400 before this.
        Field::opt("job_id", Str).nullable(),
        Field::opt("parent_job_id", Str),
        Field::opt("name", Str),
        Field::opt("tags", List(&Str)).max(MAX_LIST),
        Field::req("job_queue", Str).min(1).max(MAX_NAME),
        Field::opt("global_timeout", Int),
        Field::opt("output_timeout", Int),
        Field::opt("allocation_timeout", Int),
        Field::opt("provision_data", ProvisionData).nullable(),
        Field::opt("firmware_update_data", Dict),
        Field::opt("test_data", Nested(&TEST_DATA)),
        Field::opt("allocate_data", Dict),
        Field::opt("reserve_data", Nested(&RESERVE_DATA)),
        Field::opt("job_status_webhook", Str),
        Field::opt("job_priority", Int),
        Field::opt("exclude_agents", List(&Str))
            .max(MAX_LIST)
            .default(|| Value::Array(Vec::new())),
        Field::opt("debug", Bool),
    ],
    unknown: Unknown::Keep,
    check: None,
};

/// MuxPi: an image from `url` or an attachment.
fn muxpi_image(data: &dyn Lookup) -> Option<String> {
    (data.member("url").is_none() && data.member("use_attachment").is_none())
        .then(|| "Either 'url' or 'use_attachment' must be provided.".into())
}

/// Control host IoT: exactly one boot image source among `url`, `urls`, `attachments`.
fn iot_boot_image(data: &dyn Lookup) -> Option<String> {
    let truthy = |v: &Value| match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Bool(true) => true,
    };
    let sources: Vec<&str> = ["url", "urls", "attachments"]
        .into_iter()
        .filter(|name| data.member(name).is_some_and(truthy))
        .collect();
    match sources.len() {
        0 => Some("One of 'url', 'urls', or a provision attachment must be provided.".into()),
        1 => None,
        _ => Some(format!(
            "Provide only one boot image source; got multiple: [{}].",
            sources
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

const ROBOT_TASKS: Kind = List(&Str);

/// The device connectors' `provision_data` schemas, in the order upstream's `ProvisionData`
/// tries them (the first that loads wins, and its loaded value is stored).
pub static PROVISION_SCHEMAS: [Schema; 13] = [
    schema("cm3", &[Field::req("url", Url)]),
    schema(
        "maas",
        &[
            Field::opt("distro", Str),
            Field::opt("kernel", Str),
            Field::opt("user_data", Str),
            Field::opt("disks", List(&Dict)),
            Field::opt("ephemeral", Bool),
        ],
    ),
    schema("multi", &[Field::req("jobs", List(&Dict)).min(1)]),
    Schema {
        check: Some(muxpi_image),
        ..schema(
            "muxpi",
            &[
                Field::opt("url", Url),
                Field::opt("use_attachment", Str),
                Field::opt("attachments", ATTACHMENTS),
                Field::opt("create_user", Bool),
                Field::opt("boot_check_url", Str),
                Field::opt("media", OneOf(&["sd", "usb"])),
            ],
        )
    },
    schema(
        "noprovision",
        &[Field::opt("skip", Bool).default(|| Value::Bool(true))],
    ),
    schema(
        "oem_autoinstall",
        &[
            Field::opt("url", Url),
            Field::opt("attachments", ATTACHMENTS),
            Field::opt("token_file", Str),
            Field::opt("user_data", Str),
            Field::opt("redeploy_cfg", Str),
            Field::opt("authorized_keys", Str),
            Field::opt("control_host_iso_url", Str),
            Field::opt("control_host_iso_type", Str),
            Field::opt("update_user_data", Bool),
        ],
    ),
    schema("oem_script", &[Field::req("url", Url)]),
    Schema {
        check: Some(iot_boot_image),
        ..schema(
            "control_host_iot_custom",
            &[
                Field::opt("provisioning_timeout", Int),
                Field::opt("url", Url),
                Field::opt("urls", List(&Url)).min(1),
                Field::opt("attachments", ATTACHMENTS).max(1),
                Field::opt("agent_ssh_access", Bool),
                Field::opt("ubuntu_sso_email", Email),
                Field::req("provision_plan", Dict),
            ],
        )
    },
    Schema {
        check: Some(iot_boot_image),
        ..schema(
            "control_host_iot_preset",
            &[
                Field::opt("provisioning_timeout", Int),
                Field::opt("url", Url),
                Field::opt("urls", List(&Url)).min(1),
                Field::opt("attachments", ATTACHMENTS).max(1),
                Field::opt("agent_ssh_access", Bool),
                Field::req("preset", Str),
                Field::opt("preset_kwargs", Dict),
            ],
        )
    },
    schema(
        "control_host_kvm_autoinstall",
        &[
            Field::opt("provisioning_timeout", Int),
            Field::req("url", Url),
            Field::req("robot_tasks", ROBOT_TASKS),
            Field::opt("robot_retries", Int),
            Field::opt("autoinstall_storage_layout", Str),
            Field::opt("ubuntu_sso_email", Email),
            Field::opt("autoinstall_base_user_data", Str),
            Field::opt("autoinstall_oem", Bool),
            Field::opt("cmdline_append", Str),
        ],
    ),
    schema(
        "control_host_kvm_generic",
        &[
            Field::opt("provisioning_timeout", Int),
            Field::req("url", Url),
            Field::req("robot_tasks", ROBOT_TASKS),
            Field::opt("robot_retries", Int),
            Field::req("live_image", Bool),
            Field::req("wait_until_ssh", Bool),
        ],
    ),
    schema(
        "control_host_kvm_oem_2204",
        &[
            Field::opt("provisioning_timeout", Int),
            Field::req("alloem_url", Url),
            Field::req("robot_tasks", ROBOT_TASKS),
            Field::opt("robot_retries", Int),
            Field::opt("url", Url),
            Field::opt("oem", Str),
        ],
    ),
    schema(
        "control_host_kvm_preset",
        &[
            Field::opt("provisioning_timeout", Int),
            Field::opt("alloem_url", Url),
            Field::opt("autoinstall_base_user_data", Str),
            Field::opt("autoinstall_oem", Bool),
            Field::opt("autoinstall_storage_layout", Str),
            Field::opt("cmdline_append", Str),
            Field::opt("live_image", Bool),
            Field::opt("oem", Str),
            Field::req("preset", Str),
            Field::opt("robot_tasks", ROBOT_TASKS),
            Field::opt("ubuntu_sso_email", Email),
            Field::opt("url", Url),
            Field::opt("wait_until_ssh", Bool),
        ],
    ),
];
