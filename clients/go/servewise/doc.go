// Package servewise is a thin, idiomatic Go client for the Servewise gRPC service
// (servewise.v1.ServewiseService): it answers what batch size, batching delay, instance type and
// replica count serve a model at the lowest cost that meets a latency SLO.
//
// The request and response types are the generated ones in
// github.com/servewise/servewise/clients/go/servewisev1; this package adds what every caller
// would otherwise write again:
//
//   - [Dial] with explicit transport choices: TLS by default (system roots, [WithCAFile],
//     [WithClientCertificate] for mutual TLS), [WithPlaintext] for a local or sidecar server,
//     and [WithBearerToken], which refuses to send a token over plaintext unless
//     [WithInsecureBearerToken] says so.
//   - Retries of UNAVAILABLE only, with exponential backoff and jitter ([RetryPolicy]); every
//     unary Servewise RPC computes its answer from the request, so repeating one is safe. Other
//     codes are returned at once, and a context deadline bounds the whole call, retries included.
//   - Errors as [*Error], which carries the gRPC code and the google.rpc.BadRequest field
//     violations the server attaches to INVALID_ARGUMENT.
//
// A minimal call:
//
//	client, err := servewise.Dial(ctx, "localhost:50051", servewise.WithPlaintext())
//	if err != nil { ... }
//	defer client.Close()
//	resp, err := client.OptimizeBatch(ctx, &servewisev1.OptimizeBatchRequest{...})
//	var serr *servewise.Error
//	if errors.As(err, &serr) && serr.Code == codes.InvalidArgument {
//		for _, v := range serr.FieldViolations {
//			fmt.Println(v.Field, v.Description)
//		}
//	}
package servewise
