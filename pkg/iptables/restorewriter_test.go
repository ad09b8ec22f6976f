package iptables

import (
	"errors"
	"strings"
	"testing"
)

func TestRestoreWriterSyntax(t *testing.T) {
	var b strings.Builder
	w := NewRestoreWriter(&b)
	w.Table("nat")
	w.DeclareChain("SWY-A")
	w.DeclareChain("SWY-OLD")
	w.Rules("SWY-A", []string{"-j RETURN", "-p tcp -j ACCEPT"})
	w.Line("-I PREROUTING 1 -j SWY-A")
	w.DeleteChain("SWY-OLD")
	w.Commit()
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	want := "*nat\n:SWY-A - [0:0]\n:SWY-OLD - [0:0]\n-A SWY-A -j RETURN\n-A SWY-A -p tcp -j ACCEPT\n" +
		"-I PREROUTING 1 -j SWY-A\n-X SWY-OLD\nCOMMIT\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	if _, err := ParseSave(b.String()); err != nil {
		t.Errorf("the parser refuses the writer's text: %v", err)
	}
}

// failAfter accepts n writes, then fails every one.
type failAfter struct{ n int }

var errFull = errors.New("pipe closed")

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errFull
	}
	f.n--
	return len(p), nil
}

func TestRestoreWriterKeepsTheFirstError(t *testing.T) {
	f := &failAfter{n: 0}
	w := NewRestoreWriter(f) // buffered: the error shows at Flush
	w.Table("filter")
	w.Commit()
	if err := w.Flush(); !errors.Is(err, errFull) {
		t.Fatalf("Flush = %v, want the writer's error", err)
	}
	w.Commit()
	if err := w.Err(); !errors.Is(err, errFull) {
		t.Errorf("a later write cleared the error: %v", err)
	}
}
