//! An aggregated API served by a process on this machine, registered with the stack's
//! kube-apiserver: a serving certificate from a fresh CA, an `ExternalName: localhost` Service
//! (the apiserver refuses loopback addresses in Endpoints and EndpointSlices, but resolves an
//! ExternalName to dial it) and an APIService whose `caBundle` is that CA.
//!
//! Used for the operator's `external.metrics.k8s.io` by the e2e tests, the demo and the bench.
//! An APIService is cluster-wide and one group/version has one: whoever registers must
//! [`LocalApiService::unregister`] before the namespace goes, or the discovery of that group fails
//! and with it every namespace deletion on the stack.

use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceSpec, ServiceReference,
};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use serde_json::json;

use crate::error::{Result, StackError};
use crate::{free_port, pki};

const FIELD_MANAGER: &str = "orderpipe-stack";

/// Where an aggregated API will listen and with which certificate; see the module header.
#[derive(Debug, Clone)]
pub struct LocalApiService {
    group: String,
    version: String,
    namespace: String,
    service: String,
    port: u16,
    cert_dir: PathBuf,
    ca_pem: String,
}

impl LocalApiService {
    /// Picks a free loopback port and writes `tls.crt`/`tls.key` for
    /// `<service>.<namespace>.svc` (the name the aggregator verifies) into `cert_dir`. Nothing is
    /// registered yet: start the server on [`Self::port`] first, then [`Self::register`].
    pub fn prepare(
        group: &str,
        version: &str,
        namespace: &str,
        service: &str,
        cert_dir: &Path,
    ) -> Result<LocalApiService> {
        let host = format!("{service}.{namespace}.svc");
        let ca_pem = pki::serving_certificate(cert_dir, &host)?;
        Ok(LocalApiService {
            group: group.to_owned(),
            version: version.to_owned(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            port: free_port()?,
            cert_dir: cert_dir.to_owned(),
            ca_pem,
        })
    }

    /// The loopback port the server must listen on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Holds `tls.crt` and `tls.key`.
    pub fn cert_dir(&self) -> &Path {
        &self.cert_dir
    }

    /// The CA that signed the serving certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The host name the serving certificate is for.
    pub fn host(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    /// `v1beta1.external.metrics.k8s.io` style.
    pub fn name(&self) -> String {
        format!("{}.{}", self.version, self.group)
    }

    /// Creates (or takes over) the Service and the APIService. Register only once the server
    /// listens: while an APIService is unavailable, its group's discovery fails.
    pub async fn register(&self, client: &Client) -> Result<()> {
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.service, "namespace": self.namespace},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": self.port}],
            },
        });
        Api::<Service>::namespaced(client.clone(), &self.namespace)
            .patch(&self.service, &apply(), &Patch::Apply(&service))
            .await
            .map_err(|error| kube_error(format!("applying Service {}", self.service), error))?;
        let apiservice = APIService {
            metadata: ObjectMeta {
                name: Some(self.name()),
                ..ObjectMeta::default()
            },
            spec: Some(APIServiceSpec {
                group: Some(self.group.clone()),
                version: Some(self.version.clone()),
                group_priority_minimum: 100,
                version_priority: 100,
                ca_bundle: Some(ByteString(self.ca_pem.clone().into_bytes())),
                service: Some(ServiceReference {
                    namespace: Some(self.namespace.clone()),
                    name: Some(self.service.clone()),
                    port: Some(i32::from(self.port)),
                }),
                insecure_skip_tls_verify: None,
            }),
            status: None,
        };
        apiservices(client)
            .patch(&self.name(), &apply(), &Patch::Apply(&apiservice))
            .await
            .map_err(|error| kube_error(format!("applying APIService {}", self.name()), error))?;
        Ok(())
    }

    /// Deletes the APIService (the Service goes with its namespace); gone already is fine.
    pub async fn unregister(&self, client: &Client) -> Result<()> {
        match apiservices(client)
            .delete(&self.name(), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(kube_error(
                format!("deleting APIService {}", self.name()),
                error,
            )),
        }
    }
}

fn apiservices(client: &Client) -> Api<APIService> {
    Api::all(client.clone())
}

fn apply() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn kube_error(what: String, error: kube::Error) -> StackError {
    StackError::Kube { what, error }
}
