//! The roles an account admin stores for a user govern the user's tokens, in the real binary:
//! revoking, granting again and removing take effect on the next request and hold after a
//! `kill -9` and restart (the grants are rebuilt from the stored account records).

use crate::env::{str_field, TestEnv};
use reqwest::Method;
use serde_json::{json, Value};

/// The order's state as the account admin reads it.
async fn state_of(env: &TestEnv, admin: &str, id: &str) -> String {
    let r = env.get(admin, &format!("/v1/orders/{id}")).await;
    assert_eq!(r.status, 200, "{r}");
    str_field(&r.body, "state").to_owned()
}

async fn approve(env: &TestEnv, token: &str, id: &str) -> orderd_chaos::Reply {
    env.post(token, &format!("/v1/orders/{id}/approve"), json!({}))
        .await
}

/// `token` gets 403 naming the removal on the account's routes.
async fn assert_removed(env: &TestEnv, token: &str) {
    let api = env.api();
    let order = json!({"lines": [{"sku": "BOLT-0010", "qty": 1}], "ship_to": "BERLIN"});
    let answers = [
        api.get(token, "/v1/cart").await,
        api.get(token, "/v1/orders").await,
        api.post(
            token,
            "/v1/cart/lines",
            &json!({"sku": "BOLT-0010", "qty": 1}),
        )
        .await,
        api.place(token, "removed-1", &order).await,
    ];
    for r in answers {
        let r = r.expect("request");
        assert_eq!(r.status, 403, "{r}");
        assert!(r.body["detail"].to_string().contains("was removed"), "{r}");
    }
}

// Demo data: ACME stores bob as buyer and approver, alice as buyer; carol is its admin. Alice
// places two orders that wait for approval. Carol revokes Bob's approver role: with the same
// token (still claiming approver) his approval gets 403 and the order stays pending; granted
// again, he approves it. Carol removes Alice: her token gets 403 on cart and orders. Carol
// revokes Bob's approver role again, then orderd is killed and restarted: Bob still cannot
// approve the second order and Alice is still refused, until Carol creates her again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_roles_govern_tokens_and_hold_after_a_restart() {
    let mut env = TestEnv::start().await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    let carol = env.token("ACME", "carol", &["account_admin"]).await;
    // Over Alice's own 2,000 EUR limit; HELM-0006 is restricted.
    let big = env
        .place(&alice, "grants-1", &[("BOLT-0010", 700)], "BERLIN")
        .await;
    let restricted = env
        .place(&alice, "grants-2", &[("HELM-0006", 1)], "BERLIN")
        .await;
    let mut ids = vec![];
    for r in [big, restricted] {
        assert_eq!(r.status, 201, "{r}");
        assert_eq!(str_field(&r.body, "state"), "pending_approval", "{r}");
        ids.push(str_field(&r.body, "id").to_owned());
    }
    let bob_as = |roles: &[&str]| json!({"name": "Bob Approver", "roles": roles});
    let set_bob = |roles: Value| {
        let (api, carol) = (env.api().clone(), carol.clone());
        async move {
            let r = api
                .put(&carol, "/v1/account/users/bob", &roles)
                .await
                .expect("request");
            assert_eq!(r.status, 200, "{r}");
        }
    };

    set_bob(bob_as(&["buyer"])).await;
    let r = approve(&env, &bob, &ids[0]).await;
    assert_eq!(r.status, 403, "{r}");
    assert!(
        r.body["detail"]
            .to_string()
            .contains("has not granted approver"),
        "{r}"
    );
    assert_eq!(state_of(&env, &carol, &ids[0]).await, "pending_approval");
    set_bob(bob_as(&["buyer", "approver"])).await;
    let r = approve(&env, &bob, &ids[0]).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(str_field(&r.body, "state"), "allocated", "{r}");

    let r = env
        .api()
        .send(
            Method::DELETE,
            "/v1/account/users/alice",
            Some(&carol),
            None,
            None,
        )
        .await
        .expect("request");
    assert_eq!(r.status, 204, "{r}");
    assert_removed(&env, &alice).await;
    set_bob(bob_as(&["buyer"])).await;

    env.restart().await;
    let r = approve(&env, &bob, &ids[1]).await;
    assert_eq!(r.status, 403, "after the restart: {r}");
    assert_eq!(state_of(&env, &carol, &ids[1]).await, "pending_approval");
    assert_removed(&env, &alice).await;
    env.create_user(
        &carol,
        json!({"id": "alice", "name": "Alice Buyer", "roles": ["buyer"], "spending_limit": "2000.00"}),
    )
    .await;
    let r = env.get(&alice, "/v1/cart").await;
    assert_eq!(r.status, 200, "{r}");
}
