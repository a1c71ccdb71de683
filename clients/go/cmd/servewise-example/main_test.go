package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/servewise/servewise/clients/go/servewise"
)

// TestExampleAgainstServer pins that the example's request is valid and its plan prints: the
// README points people here, so it must not rot.
func TestExampleAgainstServer(t *testing.T) {
	addr := os.Getenv("SERVEWISE_TEST_ADDRESS")
	if addr == "" {
		t.Skip("SERVEWISE_TEST_ADDRESS is not set: needs a running server (scripts/test starts one)")
	}
	var out bytes.Buffer
	opts := []servewise.Option{servewise.WithPlaintext()}
	if err := run(addr, opts, Request(1000, 100), 60*time.Second, &out); err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Log("\n" + out.String())
	for _, want := range []string{"plan:", "x g4dn.xlarge", "simulated:", "cost:", "real-time:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "infeasible") {
		t.Errorf("the example's workload should be feasible:\n%s", out.String())
	}
}
