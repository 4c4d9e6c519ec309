//! Blobs of a run: `POST /runs/{run_id}/uploads` opens an upload session, `PUT /uploads/{id}`
//! streams the body to a file (size-limited), `GET /runs/{run_id}/blobs/{blob_id}` downloads it.
//! The RunTracker owns the sessions and the checks; this module only moves bytes.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use neko_actors::run_tracker::{BlobError, RunTrackerMsg, UploadTarget};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::AppState;
use crate::error::ApiError;

/// The optional body of `POST /runs/{run_id}/uploads`; a body that does not parse is ignored,
/// as in the reference.
#[derive(Deserialize, Default)]
struct UploadRequest {
    filename: Option<String>,
    mime: Option<String>,
    max_bytes: Option<u64>,
}

/// Opens an upload session; the URLs are relative to this server.
pub async fn create_upload(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: UploadRequest = serde_json::from_slice(&body).unwrap_or_default();
    let refs = app.refs()?;
    let blob = ApiError::from_call(
        refs.runs
            .call(
                |reply| RunTrackerMsg::CreateUpload {
                    run_id: run_id.clone(),
                    filename: req.filename,
                    mime: req.mime,
                    max_bytes: req.max_bytes,
                    reply,
                },
                Some(app.request_timeout),
            )
            .await,
    )?
    .map_err(blob_error)?;
    Ok(Json(json!({
        "upload_id": blob.blob_id,
        "blob_id": blob.blob_id,
        "upload_url": format!("/uploads/{}", blob.blob_id),
        "blob_url": format!("/runs/{run_id}/blobs/{}", blob.blob_id),
    })))
}

/// Streams the body into the upload's file; over its limit the partial file is deleted (413) and
/// the session stays open for another try.
pub async fn put_upload(
    State(app): State<AppState>,
    Path(upload_id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let refs = app.refs()?;
    let target = ApiError::from_call(
        refs.runs
            .call(
                |reply| RunTrackerMsg::BeginUpload {
                    upload_id: upload_id.clone(),
                    reply,
                },
                Some(app.request_timeout),
            )
            .await,
    )?
    .map_err(blob_error)?;
    let written = write_body(&target, body).await;
    let size = written.as_ref().ok().copied();
    if size.is_none() {
        let _ = tokio::fs::remove_file(&target.partial).await;
    }
    // Always end the session's reservation, also after a failure.
    let ended = ApiError::from_call(
        refs.runs
            .call(
                |reply| RunTrackerMsg::EndUpload {
                    upload_id: upload_id.clone(),
                    size,
                    reply,
                },
                Some(app.request_timeout),
            )
            .await,
    )?;
    let size = written?;
    ended.map_err(blob_error)?;
    Ok(Json(json!({
        "ok": true,
        "upload_id": upload_id,
        "blob_id": target.blob.blob_id,
        "size": size,
    })))
}

/// Writes the body to the partial file, then moves it into place; its size.
async fn write_body(target: &UploadTarget, body: Body) -> Result<u64, ApiError> {
    let io = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the upload: {e}"),
        )
    };
    let mut file = tokio::fs::File::create(&target.partial).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.try_next().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Could not read the request body: {e}"),
        )
    })? {
        size += chunk.len() as u64;
        if size > target.blob.max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upload too large",
            ));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    tokio::fs::rename(&target.partial, &target.complete)
        .await
        .map_err(io)?;
    Ok(size)
}

/// Downloads a finished blob of the run.
pub async fn get_blob(
    State(app): State<AppState>,
    Path((run_id, blob_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let refs = app.refs()?;
    let (_, path) = ApiError::from_call(
        refs.runs
            .call(
                |reply| RunTrackerMsg::Blob {
                    run_id,
                    blob_id: blob_id.clone(),
                    reply,
                },
                Some(app.request_timeout),
            )
            .await,
    )?
    .map_err(blob_error)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "blob not found"))?;
    let length = file.metadata().await.map(|m| m.len()).ok();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{blob_id}.bin\""),
            ),
        ],
        body,
    )
        .into_response();
    if let Some(length) = length {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, length.into());
    }
    Ok(response)
}

fn blob_error(e: BlobError) -> ApiError {
    let status = match e {
        BlobError::NotFound(_) => StatusCode::NOT_FOUND,
        BlobError::Conflict(_) => StatusCode::CONFLICT,
        BlobError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}
