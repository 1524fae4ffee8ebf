//! The parts of the OpenAPI 3.1 document that belong to the wire types: the document's frame
//! (info, the bearer security scheme), the schema of [`Timestamp`], and the error answers, all
//! `ApiError`. The schemas of the other types are derived from them (`utoipa::ToSchema`), and
//! the paths from the server's handlers, so the document served at `/v1/openapi.json` cannot
//! drift from the code.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
    ResponseBuilder,
};
use utoipa::{PartialSchema, ToSchema};

use crate::{ApiError, Problem, Timestamp};

/// Name of the bearer-token security scheme in the document.
pub const SECURITY: &str = "token";

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "An instant in RFC 3339 form, in UTC with milliseconds",
            ))
            .examples(["2025-01-01T12:00:00.000Z"])
            .into()
    }
}

impl ToSchema for Timestamp {}

/// The document without paths: info, the security scheme every path needs, and the schemas of
/// the error answers.
pub fn frame(version: &str) -> OpenApi {
    let info = InfoBuilder::new()
        .title("Outpost API")
        .version(version)
        .description(Some(
            "Control plane of Outpost, a self-healing container orchestrator for edge nodes. \
             Every path but this document needs `Authorization: Bearer <token>`. Every answer \
             that is not 2xx has an `ApiError` body.",
        ))
        .build();
    let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
    let components = ComponentsBuilder::new()
        .security_scheme(SECURITY, SecurityScheme::Http(bearer))
        .schema(ApiError::name(), ApiError::schema())
        .schema(Problem::name(), Problem::schema())
        .schema(Timestamp::name(), Timestamp::schema())
        .build();
    OpenApiBuilder::new()
        .info(info)
        .components(Some(components))
        .security(Some(vec![SecurityRequirement::new(
            SECURITY,
            Vec::<String>::new(),
        )]))
        .build()
}

/// Adds an `ApiError` answer with `status` to `operation`, unless it has one already.
pub fn add_error(operation: &mut Operation, status: u16, description: &str) {
    let responses = &mut operation.responses.responses;
    let key = status.to_string();
    if responses.contains_key(&key) {
        return;
    }
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(ApiError::name())))
        .build();
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content)
        .build();
    responses.insert(key, RefOr::T(response));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_names_the_bearer_scheme_and_the_error_schema() {
        let doc = serde_json::to_value(frame("9.9.9")).unwrap();
        assert_eq!(doc["info"]["version"], "9.9.9");
        assert_eq!(
            doc["components"]["securitySchemes"][SECURITY]["scheme"],
            "bearer"
        );
        let error = &doc["components"]["schemas"]["ApiError"];
        assert_eq!(error["required"], serde_json::json!(["error"]));
        assert_eq!(
            doc["components"]["schemas"]["Timestamp"]["format"],
            "date-time"
        );
    }

    #[test]
    fn an_error_answer_refers_to_api_error() {
        let mut op = Operation::new();
        add_error(&mut op, 404, "not found");
        add_error(&mut op, 404, "ignored: already there");
        let op = serde_json::to_value(op).unwrap();
        assert_eq!(op["responses"]["404"]["description"], "not found");
        assert_eq!(
            op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ApiError"
        );
    }
}
