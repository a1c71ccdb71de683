package servewise

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	pb "github.com/servewise/servewise/clients/go/servewisev1"
)

// TestDialRejectsInconsistentOptions pins the configurations Dial refuses before connecting.
func TestDialRejectsInconsistentOptions(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		opts []Option
		want string
	}{
		{"token over plaintext", []Option{WithPlaintext(), WithBearerToken("t")}, "refusing to send a bearer token over plaintext"},
		{"plaintext with CA file", []Option{WithPlaintext(), WithCAFile(garbage)}, "conflicts with TLS options"},
		{"plaintext with server name", []Option{WithPlaintext(), WithServerName("x")}, "conflicts with TLS options"},
		{"missing CA file", []Option{WithCAFile(filepath.Join(dir, "absent.pem"))}, "reading CA file"},
		{"CA file without PEM", []Option{WithCAFile(garbage)}, "no PEM certificate"},
		{"client cert without key", []Option{WithClientCertificate(garbage, "")}, "both a certificate and a key"},
		{"unreadable client cert", []Option{WithClientCertificate(garbage, garbage)}, "loading client certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Dial(context.Background(), "127.0.0.1:1", tc.opts...)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestDefaultTransportIsTLS pins secure-by-default: with no transport option the credentials
// are TLS, and a bearer token requires transport security.
func TestDefaultTransportIsTLS(t *testing.T) {
	cfg := newConfig([]Option{WithBearerToken("t")})
	if cfg.plaintext {
		t.Fatal("default config is plaintext")
	}
	tlsConfig, err := cfg.buildTLS()
	if err != nil {
		t.Fatal(err)
	}
	if tlsConfig.MinVersion < 0x0303 || tlsConfig.RootCAs != nil || tlsConfig.InsecureSkipVerify {
		t.Fatalf("default TLS config %+v: want TLS >= 1.2, system roots, verification on", tlsConfig)
	}
	if !(bearerToken{token: "t", requireTLS: true}).RequireTransportSecurity() {
		t.Fatal("bearer token over TLS must require transport security")
	}
	var _ credentials.PerRPCCredentials = bearerToken{}
}

// TestPlaintextServerRefusesDefaultTLS pins that a TLS client does not silently fall back to
// plaintext: against a plaintext server the call fails.
func TestPlaintextServerRefusesDefaultTLS(t *testing.T) {
	c := dialTest(t, serve(t, &fakeServer{}), WithoutRetry())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Simulate(ctx, &pb.SimulateRequest{}); Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want UNAVAILABLE (TLS handshake with a plaintext server)", err)
	}
}

// TestBearerTokenOverTLS pins that the token reaches the server as "Bearer <token>" over TLS
// verified against a CA file.
func TestBearerTokenOverTLS(t *testing.T) {
	pki := newTestPKI(t)
	f := &fakeServer{}
	addr := serve(t, f, grpc.Creds(credentials.NewTLS(pki.serverTLS(t, false))))
	c := dialTest(t, addr, WithCAFile(pki.caFile), WithBearerToken("s3cret"))
	if _, err := c.Simulate(testContext(t), &pb.SimulateRequest{}); err != nil {
		t.Fatalf("Simulate over TLS: %v", err)
	}
	if got := f.lastAuth(); got != "Bearer s3cret" {
		t.Fatalf("server saw authorization %q", got)
	}
}

// TestTLSVerifiesTheServer pins that a server certificate from an unknown CA is rejected.
func TestTLSVerifiesTheServer(t *testing.T) {
	pki, other := newTestPKI(t), newTestPKI(t)
	addr := serve(t, &fakeServer{}, grpc.Creds(credentials.NewTLS(pki.serverTLS(t, false))))
	c := dialTest(t, addr, WithCAFile(other.caFile), WithoutRetry())
	if _, err := c.Simulate(testContext(t), &pb.SimulateRequest{}); Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want UNAVAILABLE from a failed certificate check", err)
	}
}

// TestMutualTLS pins that WithClientCertificate presents the certificate a mutual-TLS server
// demands, and that the server turns away a client without one.
func TestMutualTLS(t *testing.T) {
	pki := newTestPKI(t)
	addr := serve(t, &fakeServer{}, grpc.Creds(credentials.NewTLS(pki.serverTLS(t, true))))
	with := dialTest(t, addr, WithCAFile(pki.caFile), WithClientCertificate(pki.clientCert, pki.clientKey))
	if _, err := with.Simulate(testContext(t), &pb.SimulateRequest{}); err != nil {
		t.Fatalf("Simulate with a client certificate: %v", err)
	}
	without := dialTest(t, addr, WithCAFile(pki.caFile), WithoutRetry())
	if _, err := without.Simulate(testContext(t), &pb.SimulateRequest{}); err == nil {
		t.Fatal("a client without a certificate got through a mutual-TLS server")
	}
}

// TestInsecureBearerTokenWhenAllowed pins the explicit escape hatch for loopback and tests.
func TestInsecureBearerTokenWhenAllowed(t *testing.T) {
	f := &fakeServer{}
	c := dialTest(t, serve(t, f), WithPlaintext(), WithBearerToken("dev"), WithInsecureBearerToken())
	if _, err := c.Simulate(testContext(t), &pb.SimulateRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := f.lastAuth(); got != "Bearer dev" {
		t.Fatalf("server saw authorization %q", got)
	}
}

// blockUntilDone is a Simulate handler that answers only when the call's context ends.
func blockUntilDone(ctx context.Context, _ int32) (*pb.SimulateResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestContextDeadlineReachesTheServer pins that a caller's deadline ends the call with
// DEADLINE_EXCEEDED, recognisable with errors.Is, and is not retried.
func TestContextDeadlineReachesTheServer(t *testing.T) {
	f := &fakeServer{simulate: blockUntilDone}
	c := dialTest(t, serve(t, f), WithPlaintext())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Simulate(ctx, &pb.SimulateRequest{})
	if !errors.Is(err, context.DeadlineExceeded) || Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("took %v under a 100 ms deadline", elapsed)
	}
	if f.calls.Load() != 1 {
		t.Fatalf("%d calls; DEADLINE_EXCEEDED must not be retried", f.calls.Load())
	}
}

// TestDefaultTimeout pins that WithDefaultTimeout bounds calls without a deadline and leaves a
// caller's own deadline alone.
func TestDefaultTimeout(t *testing.T) {
	f := &fakeServer{simulate: blockUntilDone}
	c := dialTest(t, serve(t, f), WithPlaintext(), WithDefaultTimeout(50*time.Millisecond))
	start := time.Now()
	if _, err := c.Simulate(context.Background(), &pb.SimulateRequest{}); Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED from the default timeout", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("took %v with a 50 ms default timeout", elapsed)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, _ = c.Simulate(ctx, &pb.SimulateRequest{})
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond {
		t.Fatalf("returned after %v: the caller's 400 ms deadline must win over the default", elapsed)
	}
}

// TestWithBlock pins that WithBlock waits for a ready connection and fails at ctx's deadline
// when nothing listens.
func TestWithBlock(t *testing.T) {
	c := dialTest(t, serve(t, &fakeServer{}), WithPlaintext(), WithBlock())
	if state := c.Conn().GetState().String(); state != "READY" {
		t.Fatalf("state after a blocking Dial = %s", state)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if c, err := Dial(ctx, "127.0.0.1:1", WithPlaintext(), WithBlock()); err == nil {
		c.Close()
		t.Fatal("a blocking Dial to a closed port succeeded")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want it to wrap context.DeadlineExceeded", err)
	}
}
