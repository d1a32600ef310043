//! librdkafka's errors, classified where they are read: an outage the client rides out,
//! or a failure that would come again.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::transport::TransportError;

/// A librdkafka error, classified where it is read. What the client cannot go on from (a
/// fatal error, a configuration or client it refuses) and what the cluster will refuse
/// again (authentication, authorisation) is not an outage; the rest is.
pub(crate) fn failed(error: KafkaError) -> TransportError {
    use RDKafkaErrorCode as Code;
    let lasting = match &error {
        KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::AdminOpCreation(_)
        | KafkaError::Nul(_)
        | KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::Transaction(error) => error.is_fatal(),
        _ => matches!(
            error.rdkafka_error_code(),
            Some(
                Code::Fatal
                    | Code::InvalidArgument
                    | Code::Authentication
                    | Code::SaslAuthenticationFailed
                    | Code::TopicAuthorizationFailed
                    | Code::GroupAuthorizationFailed
                    | Code::ClusterAuthorizationFailed
                    | Code::TransactionalIdAuthorizationFailed
            )
        ),
    };
    if lasting { TransportError::broker(error) } else { TransportError::unavailable(error) }
}
