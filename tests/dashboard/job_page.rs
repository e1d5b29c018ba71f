//! The job page: its timeline, the start of long results and definitions, the end of
//! long logs, and its links.

use super::*;

#[tokio::test]
async fn job_page_timeline_lists_each_reported_phase_when_the_agent_ran_the_job() {
    let srv = TestServer::start();
    let id = srv.submit(&json!({"job_queue": "phase-q"})).await;
    assert_eq!(srv.pop_id(&["phase-q"]).await.as_deref(), Some(id.as_str()));
    for state in ["setup", "provision", "test", "complete"] {
        srv.post_result(&id, &json!({"job_state": state})).await;
    }
    let html = srv
        .get(&format!("/jobs/{id}"))
        .await
        .expect_status(200)
        .text();
    let start = html.find("id=\"timeline\"").expect("a timeline");
    let timeline = &html[start..start + html[start..].find("</ol>").unwrap()];
    let states: Vec<&str> = timeline
        .split("<span class=\"state\">")
        .skip(1)
        .map(|rest| rest.split('<').next().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "submitted",
            "dispatched",
            "setup",
            "provision",
            "test",
            "complete"
        ]
    );
}

/// A job's log and results may hold up to `--max-job-data-bytes` (1 GiB); its page shows
/// the end of the log and the start of the results (256 KiB each), says so and links to
/// the whole, instead of answering all of it, escaped, in one page.
#[tokio::test]
async fn job_page_and_legacy_output_take_the_largest_fragment_number() {
    // An agent may number a fragment i64::MAX (upstream's store takes any 64-bit signed
    // number): the page's next fragment is past it (this was a 500, an overflow), and a
    // legacy chunk after it is numbered no higher (not read back negative).
    let srv = TestServer::start();
    let id = srv.submit_to("big-number").await;
    srv.pop_id(&["big-number"]).await.unwrap();
    srv.post_json(
        &format!("/v1/result/{id}/log/output"),
        &fragment(i64::MAX as u64, "test", "last words\n"),
    )
    .await
    .expect_status(200);
    let page = srv.get(&format!("/jobs/{id}")).await;
    page.expect_status(200);
    let html = page.text();
    assert!(html.contains("last words"), "{html}");
    assert!(
        html.contains("9223372036854775808"),
        "the next fragment to follow from"
    );
    srv.post_raw(
        &format!("/v1/result/{id}/output"),
        Some("text/plain"),
        b"legacy".to_vec(),
    )
    .await
    .expect_status(200);
    let log = srv
        .get(&format!("/v1/result/{id}/log/output"))
        .await
        .expect_json();
    assert_eq!(
        log["output"]["test"]["last_fragment_number"],
        i64::MAX,
        "{log}"
    );
    srv.get(&format!("/jobs/{id}")).await.expect_status(200);
}

/// The results box shows what `GET /v1/result/<id>` answers: the job's state, not the
/// `complete` its agent posted after the job was cancelled.
#[tokio::test]
async fn job_page_results_show_the_jobs_state_as_the_api_answers_it() {
    let srv = TestServer::start();
    let id = srv.submit_to("cancel-then-complete").await;
    srv.pop_id(&["cancel-then-complete"]).await.unwrap();
    srv.post_result(&id, &json!({"job_state": "provision"}))
        .await;
    srv.cancel(&id).await.expect_status(200);
    srv.post_result(&id, &json!({"job_state": "complete", "test_status": 0}))
        .await;
    assert_eq!(srv.result(&id).await["job_state"], "cancelled");
    let html = srv.get(&format!("/jobs/{id}")).await.text();
    let results = html
        .split("id=\"results\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .expect("a results box");
    assert!(
        results.contains("&quot;job_state&quot;: &quot;cancelled&quot;")
            && !results.contains("complete")
            && results.contains("test_status"),
        "{results}"
    );
}

#[tokio::test]
async fn job_page_shows_the_end_of_a_long_log_and_the_start_of_long_results() {
    let srv = TestServer::start();
    let id = srv.submit_to("long-log").await;
    srv.pop_id(&["long-log"]).await.unwrap();
    let chunk = "<x>\n".repeat(256 << 10); // 1 MiB, four times that escaped
    for (n, text) in [
        format!("THE-START\n{chunk}"),
        chunk.clone(),
        format!("{chunk}THE-END\n"),
    ]
    .iter()
    .enumerate()
    {
        srv.post_json(
            &format!("/v1/result/{id}/log/output"),
            &fragment(n as u64, "test", text),
        )
        .await
        .expect_status(200);
    }
    // Results too: three posts of 1 MiB fields.
    for n in 0..3 {
        srv.post_result(&id, &json!({format!("field-{n}"): chunk}))
            .await;
    }
    let page = srv.get(&format!("/jobs/{id}")).await;
    page.expect_status(200);
    let html = page.text();
    assert!(
        html.contains("field-0") && !html.contains("field-2"),
        "the results' start"
    );
    assert!(
        html.contains("id=\"results-truncated\""),
        "the page says results were cut"
    );
    assert!(html.contains("THE-END"), "the log's end is shown");
    assert!(!html.contains("THE-START"), "not the whole log");
    assert!(html.len() < 2 << 20, "the page is {} bytes", html.len());
    assert!(
        html.contains("id=\"log-truncated\"")
            && html.contains(&format!("/v1/result/{id}/log/output")),
        "the page says the log was cut and links to the whole"
    );
}

/// The job page links the artifact only once there is one (the link would answer 204, a
/// blank page, before); a page's error reaches a browser as a page with the same status
/// and message (an API client still gets JSON); `/` says its answer depends on `Accept`.
#[tokio::test]
async fn job_page_links_only_an_uploaded_artifact_and_page_errors_are_pages() {
    let srv = TestServer::start();
    let id = srv.submit_to("art-page").await;
    let html = [("accept", "text/html")];
    let page = srv.get_with_headers(&format!("/jobs/{id}"), &html).await;
    assert!(
        page.text().contains("No artifact uploaded.") && !page.text().contains("id=\"artifact\""),
        "{}",
        page.text()
    );
    srv.post_multipart(
        &format!("/v1/result/{id}/artifact"),
        "file",
        "a.tgz",
        b"tarball",
    )
    .await
    .expect_status(200);
    let page = srv.get_with_headers(&format!("/jobs/{id}"), &html).await;
    assert!(page.text().contains("id=\"artifact\""), "{}", page.text());

    let unknown = crate::util::new_id();
    let r = srv
        .get_with_headers(&format!("/jobs/{unknown}"), &html)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.content_type().as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(
        r.text().contains(&format!("Job {unknown} does not exist.")) && r.text().contains("404"),
        "{}",
        r.text()
    );
    let r = srv.get_with_headers("/jobs?state=bogus", &html).await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("<h1>422"), "{}", r.text());
    let r = srv.get(&format!("/jobs/{unknown}")).await;
    assert_eq!(
        r.expect_error(404),
        format!("Job {unknown} does not exist.")
    );

    for accept in ["text/html", "*/*"] {
        let r = srv.get_with_headers("/", &[("accept", accept)]).await;
        r.expect_status(200);
        assert_eq!(
            r.headers.get("vary").map(|v| v.to_str().unwrap()),
            Some("accept"),
            "{accept}"
        );
    }
}

/// The text of the element with `id="{id}"` (a `<pre>`), HTML entities as the template
/// engine writes them turned back into characters.
fn pre_text(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let start = at + html[at..].find('>').unwrap() + 1;
    let end = start + html[start..].find("</pre>").unwrap();
    html[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#x2f;", "/")
        .replace("&amp;", "&")
}

/// The job page prints the start of results of many fields exactly as serde_json prints
/// the whole document parsed (numbers, escapes, empty and nested values, a key replaced
/// in place by a later post), though it now prints only what it shows, as it reads it.
#[tokio::test]
async fn job_page_prints_the_start_of_results_of_many_fields_as_the_whole_document_prints() {
    let srv = TestServer::start();
    let id = srv.submit_to("many-fields").await;
    let mut merged = serde_json::Map::new();
    let mut posts: Vec<String> = (0..4)
        .map(|post| {
            let fields: Vec<String> = (0..1500)
                .map(|n| format!(r#""p{post}f{n}" : {{"n": [1.50, -2, 1e2, {n}], "s": "\u00e9 <b>\n{n}/", "e": {{}}, "a": [ ]}}"#))
                .collect();
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    posts.push(r#"{"p0f0": "replaced"}"#.to_owned());
    for body in &posts {
        srv.post_raw(
            &format!("/v1/result/{id}"),
            Some("application/json"),
            body.clone().into_bytes(),
        )
        .await
        .expect_status(200);
        let post: serde_json::Map<String, Value> = serde_json::from_str(body).unwrap();
        merged.extend(post);
    }
    // As `GET /v1/result/<id>` answers it: the merged posts after the job's state.
    let answered = srv.result(&id).await;
    let mut expected = serde_json::Map::new();
    expected.insert("job_state".into(), json!("waiting"));
    expected.extend(merged);
    assert_eq!(answered, Value::Object(expected.clone()));
    let whole = serde_json::to_string_pretty(&Value::Object(expected)).unwrap();
    let mut end = 256 << 10;
    assert!(whole.len() > end);
    while !whole.is_char_boundary(end) {
        end -= 1;
    }
    let html = srv
        .get(&format!("/jobs/{id}"))
        .await
        .expect_status(200)
        .text();
    assert_eq!(pre_text(&html, "results"), whole[..end]);
    assert!(html.contains("id=\"results-truncated\""), "the cut is said");

    // Results that fit are shown whole, without the note.
    let small = srv.submit_to("many-fields").await;
    let doc = json!({"a": [1.5, {"b": null}], "c": "<d>"});
    srv.post_result(&small, &doc).await;
    let html = srv
        .get(&format!("/jobs/{small}"))
        .await
        .expect_status(200)
        .text();
    let answered = json!({"job_state": "waiting", "a": [1.5, {"b": null}], "c": "<d>"});
    assert_eq!(srv.result(&small).await, answered);
    assert_eq!(
        pre_text(&html, "results"),
        serde_json::to_string_pretty(&answered).unwrap()
    );
    assert!(!html.contains("id=\"results-truncated\""));
}

/// A job document nested deep grows by twice its depth a line when printed (a 200 KB one
/// made a 49 MB page): the page shows the first 256 KiB of each view of the definition,
/// exactly as the whole prints, and says where the rest is; a small one is shown whole.
#[tokio::test]
async fn job_page_shows_the_start_of_a_definition_that_prints_large() {
    let srv = TestServer::start();
    let depth = 100;
    let body = format!(
        "{{\"job_queue\": \"deep\", \"x\": {}{}{}}}",
        "[".repeat(depth),
        vec!["0"; 100_000].join(","),
        "]".repeat(depth)
    );
    let r = srv
        .post_raw(
            "/v1/job",
            Some("application/json"),
            body.clone().into_bytes(),
        )
        .await;
    let id = r.expect_json()["job_id"].as_str().unwrap().to_owned();
    let page = srv.get(&format!("/jobs/{id}")).await;
    page.expect_status(200);
    let html = page.text();
    assert!(html.len() < 1 << 20, "{} bytes", html.len());
    assert!(
        html.contains("id=\"definition-truncated\""),
        "the cut is said"
    );
    let whole: Value = serde_json::from_str(&body).unwrap();
    let whole = serde_json::to_string_pretty(&whole).unwrap();
    assert!(
        whole.len() > 16 << 20,
        "the whole would be {} bytes",
        whole.len()
    );
    assert_eq!(pre_text(&html, "definition-json"), whole[..256 << 10]);
    let yaml = pre_text(&html, "definition-yaml");
    assert_eq!(yaml.len(), 256 << 10);
    assert!(yaml.starts_with("\"job_queue\": \"deep\"\n\"x\":\n  -\n    -\n"));

    let small = srv
        .submit(&json!({"job_queue": "deep", "tags": ["a"]}))
        .await;
    let html = srv.get(&format!("/jobs/{small}")).await.text();
    assert!(!html.contains("id=\"definition-truncated\""));
    let shown = pre_text(&html, "definition-json");
    let parsed: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        (&parsed["job_queue"], &parsed["tags"]),
        (&json!("deep"), &json!(["a"]))
    );
    assert_eq!(shown, serde_json::to_string_pretty(&parsed).unwrap());
}

/// The job page's log is the end of its run's whole text (phases in order, each phase's
/// fragments by number) when fragments arrived scrambled across phases and only the last
/// few hold what it shows; its figures (bytes stored, next fragment) count the whole run.
#[tokio::test]
async fn job_page_shows_the_end_of_a_log_whose_fragments_arrived_out_of_order() {
    let srv = TestServer::start();
    let id = srv.submit_to("scrambled").await;
    srv.pop_id(&["scrambled"]).await.unwrap();
    // 3 phases × 100 fragments of about 1 KiB (300 KiB), numbered across phases as an
    // agent numbers them; some empty.
    let phases = ["setup", "provision", "test"];
    let mut fragments = Vec::new();
    for (p, phase) in phases.iter().enumerate() {
        for k in 0..100u64 {
            let number = p as u64 * 100 + k;
            let text = match k % 17 {
                0 => String::new(),
                _ => format!("{phase} {number:03} {}\n", "\u{e9}".repeat(500)),
            };
            fragments.push((number, *phase, text));
        }
    }
    let whole: String = fragments.iter().map(|f| f.2.as_str()).collect();
    // Posted in a scrambled order (7919 is prime to 300: each once).
    fragments.sort_by_key(|f| (f.0 * 7919) % 300);
    for (number, phase, text) in &fragments {
        srv.post_json(
            &format!("/v1/result/{id}/log/output"),
            &fragment(*number, phase, text),
        )
        .await
        .expect_status(200);
    }
    // The last 256 KiB, from a character and then a line boundary.
    let mut start = whole.len() - (256 << 10);
    while !whole.is_char_boundary(start) {
        start += 1;
    }
    let tail = &whole[start..];
    let tail = &tail[tail.find('\n').unwrap() + 1..];
    let html = srv
        .get(&format!("/jobs/{id}"))
        .await
        .expect_status(200)
        .text();
    assert_eq!(pre_text(&html, "log"), tail);
    assert!(html.contains(&format!(
        "Showing the last {} of {} bytes",
        tail.len(),
        whole.len()
    )));
    assert!(
        html.contains("data-next=\"300\""),
        "one past the highest number"
    );
}
