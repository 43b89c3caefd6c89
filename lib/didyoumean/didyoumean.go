// Package didyoumean finds the known word a typo was meant to be, for
// "unknown field (did you mean ...?)" errors in manifests and fledge.toml.
package didyoumean

import (
	"sort"
	"strings"
)

// Closest returns the candidate that word most likely misspells: one equal
// to it but for case, or within two edits (insertions, deletions,
// substitutions); ties go to the alphabetically first. ok is false when
// none is that close.
func Closest(word string, candidates []string) (best string, ok bool) {
	var near []string
	for _, c := range candidates {
		if strings.EqualFold(c, word) || Distance(c, word) <= 2 {
			near = append(near, c)
		}
	}
	if len(near) == 0 {
		return "", false
	}
	sort.Strings(near)
	return near[0], true
}

// Distance is the Levenshtein distance between a and b (bytes).
func Distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
