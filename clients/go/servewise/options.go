package servewise

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// An Option configures [Dial].
type Option func(*config)

type config struct {
	plaintext          bool
	tlsConfig          *tls.Config
	caFile             string
	certFile, keyFile  string
	serverName         string
	token              string
	allowInsecureToken bool
	retry              RetryPolicy
	defaultTimeout     time.Duration
	block              bool
	dialOptions        []grpc.DialOption
}

func newConfig(opts []Option) *config {
	c := &config{retry: DefaultRetryPolicy}
	for _, opt := range opts {
		opt(c)
	}
	return c
}

func (c *config) usesTLSOptions() bool {
	return c.tlsConfig != nil || c.caFile != "" || c.certFile != "" || c.keyFile != "" ||
		c.serverName != ""
}

// WithPlaintext connects without TLS (a local server, a sidecar, a test). Without it, Dial uses
// TLS with the system's root certificates.
func WithPlaintext() Option { return func(c *config) { c.plaintext = true } }

// WithTLS uses cfg as the base TLS configuration (it is cloned; the other TLS options are
// applied on top of it).
func WithTLS(cfg *tls.Config) Option {
	return func(c *config) { c.tlsConfig = cfg.Clone() }
}

// WithCAFile trusts the PEM certificates in path (instead of the system roots) to verify the
// server.
func WithCAFile(path string) Option { return func(c *config) { c.caFile = path } }

// WithClientCertificate presents the PEM certificate and key to the server (mutual TLS).
func WithClientCertificate(certFile, keyFile string) Option {
	return func(c *config) { c.certFile, c.keyFile = certFile, keyFile }
}

// WithServerName verifies the server's certificate against name instead of the dialled host.
func WithServerName(name string) Option { return func(c *config) { c.serverName = name } }

// WithBearerToken sends "authorization: Bearer <token>" with every call. Dial refuses it over
// plaintext unless [WithInsecureBearerToken] is also given.
func WithBearerToken(token string) Option { return func(c *config) { c.token = token } }

// WithInsecureBearerToken allows [WithBearerToken] over a plaintext connection, where anyone on
// the path can read the token. Meant for loopback and tests.
func WithInsecureBearerToken() Option { return func(c *config) { c.allowInsecureToken = true } }

// WithRetry replaces [DefaultRetryPolicy].
func WithRetry(p RetryPolicy) Option { return func(c *config) { c.retry = p } }

// WithoutRetry makes every call once.
func WithoutRetry() Option { return func(c *config) { c.retry = RetryPolicy{MaxAttempts: 1} } }

// WithDefaultTimeout bounds each unary call, retries included, whose context has no deadline of
// its own. A context deadline always wins. It does not apply to the Control stream.
func WithDefaultTimeout(d time.Duration) Option { return func(c *config) { c.defaultTimeout = d } }

// WithBlock makes Dial connect at once and wait until the connection is ready or ctx ends.
// Without it, Dial returns immediately and the first call connects.
func WithBlock() Option { return func(c *config) { c.block = true } }

// WithDialOptions appends raw grpc.DialOptions (keepalive, a custom resolver, stats handlers,
// more interceptors: these run inside the retry interceptor, once per attempt).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, opts...) }
}

// grpcOptions validates the configuration and turns it into grpc.DialOptions.
func (c *config) grpcOptions() ([]grpc.DialOption, error) {
	var opts []grpc.DialOption
	if c.plaintext {
		if c.usesTLSOptions() {
			return nil, errors.New("servewise: WithPlaintext conflicts with TLS options " +
				"(WithTLS, WithCAFile, WithClientCertificate, WithServerName)")
		}
		if c.token != "" && !c.allowInsecureToken {
			return nil, errors.New("servewise: refusing to send a bearer token over plaintext; " +
				"use TLS, or WithInsecureBearerToken on a trusted network")
		}
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		tlsConfig, err := c.buildTLS()
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
	}
	if c.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerToken{
			token: c.token, requireTLS: !c.plaintext,
		}))
	}
	var unary []grpc.UnaryClientInterceptor
	if c.defaultTimeout > 0 {
		unary = append(unary, defaultTimeoutInterceptor(c.defaultTimeout))
	}
	if c.retry.MaxAttempts > 1 {
		unary = append(unary, c.retry.UnaryClientInterceptor())
	}
	if len(unary) > 0 {
		opts = append(opts, grpc.WithChainUnaryInterceptor(unary...))
	}
	return append(opts, c.dialOptions...), nil
}

func (c *config) buildTLS() (*tls.Config, error) {
	cfg := c.tlsConfig
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, fmt.Errorf("servewise: reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("servewise: no PEM certificate in CA file %s", c.caFile)
		}
		cfg.RootCAs = pool
	}
	if c.certFile != "" || c.keyFile != "" {
		if c.certFile == "" || c.keyFile == "" {
			return nil, errors.New("servewise: WithClientCertificate needs both a certificate and a key file")
		}
		cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err != nil {
			return nil, fmt.Errorf("servewise: loading client certificate: %w", err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	if c.serverName != "" {
		cfg.ServerName = c.serverName
	}
	return cfg, nil
}

// bearerToken is per-RPC credentials sending a fixed OAuth2-style bearer token.
type bearerToken struct {
	token      string
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }

func defaultTimeoutInterceptor(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
