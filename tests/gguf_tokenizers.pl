#!/usr/bin/env perl
# gguf_tokenizers.pl KIND BYTE_TOKENIZER_JSON OUT_JSON: small tokenizer.json files of the families
# `peft export` maps to llama.cpp's tokenizers, for tests/cli_gguf_test.sh. KIND:
#   llama3, qwen2     peft init's byte-level vocabulary plus a few merges, behind Llama 3's or Qwen2's
#                     Split regex (llama3 also with ignore_merges and a whole-word token no merge makes)
#   spm, metaspace    SentencePiece-style BPE: <unk> <s> </s>, the 256 byte tokens, "▁" and a-z, and
#                     every split of each longer token as a merge (as HF converts SentencePiece
#                     models); spm spells spaces with the Llama 2 normalizer, metaspace with Metaspace
use strict;
use warnings;
use JSON::PP;
use utf8;

my ($kind, $byte_json, $out) = @ARGV;
my $json = JSON::PP->new->canonical->utf8;
sub slurp { local $/; open my $h, '<', $_[0] or die "$_[0]: $!"; my $t = <$h>; close $h; return $t }
my $tok;
my %regex = (
    llama3 => q{(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+},
    qwen2  => q{(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+},
);

if ($regex{$kind}) {
    $tok = $json->decode(slurp($byte_json));
    my $vocab = $tok->{model}{vocab};
    my $next = 257;
    my @merges = (['Ġ', 't'], ['h', 'e'], ['Ġt', 'he'], ['a', 't'], ['Ġ', 'c'], ['Ġc', 'at'], ['Ġ', 's'], ['Ġs', 'at'],
                  ['o', 'n'], ['Ġ', 'on'], ['t', 'he'], ['1', '2'], ['12', '3'], ["'", 's']);
    for my $m (@merges) { $vocab->{$m->[0] . $m->[1]} //= $next++ }
    $vocab->{'Ġmat'} = $next++ if $kind eq 'llama3';  # reachable only by ignore_merges
    $tok->{model}{merges} = [map { "$_->[0] $_->[1]" } @merges];
    $tok->{model}{ignore_merges} = $kind eq 'llama3' ? JSON::PP::true : JSON::PP::false;
    $tok->{pre_tokenizer} = {type => 'Sequence', pretokenizers => [
        {type => 'Split', pattern => {Regex => $regex{$kind}}, behavior => 'Isolated', invert => JSON::PP::false},
        {type => 'ByteLevel', add_prefix_space => JSON::PP::false, trim_offsets => JSON::PP::true, use_regex => JSON::PP::false}]};
} elsif ($kind eq 'spm' || $kind eq 'metaspace') {
    my @special = ('<unk>', '<s>', '</s>');
    my @tokens = (@special, (map { sprintf '<0x%02X>', $_ } 0 .. 255), '▁', 'a' .. 'z');
    my @longer = qw(▁t he ▁the at ▁c ▁cat ▁s ▁sat on ▁on ▁m ▁mat in ▁in th ▁w or ▁wor ld);
    my %id;
    $id{$tokens[$_]} = $_ for 0 .. $#tokens;
    my @merges;
    for my $t (@longer) {
        push @tokens, $t;
        $id{$t} = $#tokens;
        for my $i (1 .. length($t) - 1) {
            my ($l, $r) = (substr($t, 0, $i), substr($t, $i));
            push @merges, "$l $r" if defined $id{$l} && defined $id{$r};
        }
    }
    $tok = {
        version => '1.0',
        added_tokens => [map { {id => $_, content => $special[$_], single_word => JSON::PP::false, lstrip => JSON::PP::false,
                               rstrip => JSON::PP::false, normalized => JSON::PP::false, special => JSON::PP::true} } 0 .. 2],
        $kind eq 'spm' ? (normalizer => {type => 'Sequence', normalizers => [{type => 'Prepend', prepend => '▁'},
                                         {type => 'Replace', pattern => {String => ' '}, content => '▁'}]}, pre_tokenizer => undef)
                       : (normalizer => undef, pre_tokenizer => {type => 'Metaspace', replacement => '▁', prepend_scheme => 'first', split => JSON::PP::false}),
        post_processor => {type => 'TemplateProcessing', single => [{SpecialToken => {id => '<s>', type_id => 0}}, {Sequence => {id => 'A', type_id => 0}}],
                           pair => [], special_tokens => {'<s>' => {id => '<s>', ids => [1], tokens => ['<s>']}}},
        decoder => {type => 'Sequence', decoders => [{type => 'Replace', pattern => {String => '▁'}, content => ' '}, {type => 'ByteFallback'},
                    {type => 'Fuse'}, {type => 'Strip', content => ' ', start => 1, stop => 0}]},
        model => {type => 'BPE', dropout => undef, unk_token => '<unk>', continuing_subword_prefix => undef, end_of_word_suffix => undef,
                  fuse_unk => JSON::PP::true, byte_fallback => JSON::PP::true, ignore_merges => JSON::PP::false,
                  vocab => {map { $tokens[$_] => $_ } 0 .. $#tokens}, merges => \@merges},
    };
} else {
    die "gguf_tokenizers.pl: unknown kind $kind\n";
}
open my $h, '>', $out or die "$out: $!";
print $h $json->encode($tok);
close $h;
