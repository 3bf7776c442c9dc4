//! Running SQL as the roles Supabase's clients use.

use serde_json::json;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

/// The SQLSTATE of a failed statement, or its message when it has none.
pub fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| error.to_string())
}

/// Runs `sql` as a Supabase client would reach the database: in a
/// transaction as `role`, with the JWT claims PostgREST sets for a token of
/// user `sub` (none without one). Rolled back; answers the rows or the
/// SQLSTATE.
pub async fn as_client(
    client: &mut Client,
    role: &str,
    sub: Option<Uuid>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, String> {
    let tx = client.transaction().await.expect("a transaction");
    tx.batch_execute(&format!("SET LOCAL ROLE {role}"))
        .await
        .expect("the role exists");
    if let Some(sub) = sub {
        let claims = json!({ "sub": sub, "role": role }).to_string();
        tx.query_typed(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[(&claims, Type::TEXT)],
        )
        .await
        .expect("claims set");
    }
    let result = tx.query_typed(sql, params).await;
    tx.rollback().await.expect("rolled back");
    result.map_err(|e| sqlstate(&e))
}
