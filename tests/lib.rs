//! Multi-node tests of the coordinator, in three settings: nodes wired through an in-process
//! router (`cluster_inproc`), nodes of one process over loopback gRPC (`cluster_grpc`), and
//! real `deployd` processes killed with SIGKILL (`cluster_process`). The tests are the test
//! targets of this package; this library is empty.
