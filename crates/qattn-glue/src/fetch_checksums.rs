//! The checksums `qattn data fetch` verifies: one row per file it installs, one per download.
//!
//! **Where the values come from.** Every `sha256` below is copied from
//! `../shared/data/MANIFEST.md` (the project's offline copy of the official GLUE and SuperGLUE
//! files, each traced there to its source and cross-checked against independent copies), and
//! every one was recomputed with `sha256sum` on that copy when this table was written: all 43
//! matched. A file that has no copy in `../shared/data` has `sha256: None` — *no checksum is
//! known* — and `qattn data fetch` installs it with a warning naming the file and the sha256 it
//! got, never checking it against a guessed value. The same holds for every download (the
//! archives and the MRPC source files): none is available here, so none has a known checksum;
//! their content is checked through the files extracted from them.
//!
//! To add a checksum, take it from a copy whose provenance is recorded (as in the MANIFEST),
//! never from a single unverified download.

/// The expected content of one installed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileChecksum {
    /// Path under the destination directory, `/`-separated (`glue/CoLA/train.tsv`).
    pub path: &'static str,
    /// Lower-case hex SHA-256 of the file, `None` when no checksum is known.
    pub sha256: Option<&'static str>,
    /// Size in bytes, where known (from the same MANIFEST row).
    pub bytes: Option<u64>,
}

/// The expected content of one download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadChecksum {
    /// The download's path on the official host (`/glue/data/CoLA.zip`), the same under a
    /// mirror.
    pub path: &'static str,
    /// Lower-case hex SHA-256, `None` when no checksum is known.
    pub sha256: Option<&'static str>,
}

/// Every file `qattn data fetch` installs for the readers, with its checksum where one is known.
/// Files an archive holds beyond these (CoLA's `original/`, …) have no row and are installed
/// with a warning.
pub const FILES: &[FileChecksum] = &[
    FileChecksum {
        path: "glue/CoLA/train.tsv",
        sha256: Some("cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624"),
        bytes: Some(428590),
    },
    FileChecksum {
        path: "glue/CoLA/dev.tsv",
        sha256: Some("8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd"),
        bytes: Some(53717),
    },
    FileChecksum {
        path: "glue/CoLA/test.tsv",
        sha256: Some("3b4df85f7a9a0633574b38d181e18090ac961a24b18fb6bcd74999ddea8ad0b8"),
        bytes: Some(48788),
    },
    FileChecksum {
        path: "glue/SST-2/train.tsv",
        sha256: Some("48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1"),
        bytes: Some(3806081),
    },
    FileChecksum {
        path: "glue/SST-2/dev.tsv",
        sha256: Some("54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
        bytes: Some(94931),
    },
    FileChecksum {
        path: "glue/SST-2/test.tsv",
        sha256: Some("69a938605609b3e6663b4487918fe1565eb293734e6e520d0366d1d412fd2a13"),
        bytes: Some(197335),
    },
    FileChecksum {
        path: "glue/MRPC/train.tsv",
        sha256: Some("69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3"),
        bytes: Some(941471),
    },
    FileChecksum {
        path: "glue/MRPC/dev.tsv",
        sha256: Some("9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17"),
        bytes: Some(105616),
    },
    FileChecksum {
        path: "glue/MRPC/test.tsv",
        sha256: Some("aee460ceda833926b8ab2ad952d399f5cf8bc9335cff19afcac03dc449558622"),
        bytes: Some(445335),
    },
    FileChecksum {
        path: "glue/MRPC/msr_paraphrase_train.txt",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/MRPC/msr_paraphrase_test.txt",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/MRPC/dev_ids.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/STS-B/train.tsv",
        sha256: Some("41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2"),
        bytes: Some(984099),
    },
    FileChecksum {
        path: "glue/STS-B/dev.tsv",
        sha256: Some("fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59"),
        bytes: Some(276928),
    },
    FileChecksum {
        path: "glue/STS-B/test.tsv",
        sha256: Some("16b4223d7d44a644fbc10f1b449472cfe81e1715fb07cf44023b0aa88ce856eb"),
        bytes: Some(292587),
    },
    FileChecksum {
        path: "glue/QQP/train.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/QQP/dev.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/QQP/test.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/MNLI/train.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/MNLI/dev_matched.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/MNLI/dev_mismatched.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/MNLI/test_matched.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/MNLI/test_mismatched.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/QNLI/train.tsv",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "glue/QNLI/dev.tsv",
        sha256: Some("ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd"),
        bytes: Some(1367342),
    },
    FileChecksum {
        path: "glue/QNLI/test.tsv",
        sha256: Some("6d856264e292fa7a7bc7b8e182efa1454ffd9532733c12ad813017dd5b377a5a"),
        bytes: Some(1300988),
    },
    FileChecksum {
        path: "glue/RTE/train.tsv",
        sha256: Some("41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c"),
        bytes: Some(846226),
    },
    FileChecksum {
        path: "glue/RTE/dev.tsv",
        sha256: Some("80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb"),
        bytes: Some(90343),
    },
    FileChecksum {
        path: "glue/RTE/test.tsv",
        sha256: Some("6e33f09b5c2bfd5fd5fde217070f3dd49e484e33b9752b5864cf36fc421a213f"),
        bytes: Some(933969),
    },
    FileChecksum {
        path: "glue/WNLI/train.tsv",
        sha256: Some("9a88e9d54b6861cc796a088e9acf4f5f65064a9ef65ae6fa7a688b28391e5c9a"),
        bytes: Some(99411),
    },
    FileChecksum {
        path: "glue/WNLI/dev.tsv",
        sha256: Some("cba00490596dd14be8cf53b4f53bb744abe3a7b89f81ab210528d80225338ed5"),
        bytes: Some(11261),
    },
    FileChecksum {
        path: "glue/WNLI/test.tsv",
        sha256: Some("ff0296817e235bf6f7a230c5f6781bd6ee228a45445f6510831fdef6f2a04766"),
        bytes: Some(35761),
    },
    FileChecksum {
        path: "glue/AX/AX.tsv",
        sha256: Some("0e13510b1bb14436ff7e2ee82338f0efb0133ecf2e73507a697dc210db3f05fd"),
        bytes: Some(222257),
    },
    FileChecksum {
        path: "superglue/BoolQ/train.jsonl",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "superglue/BoolQ/val.jsonl",
        sha256: Some("0c86a5045886e5795fe9052003873f7d94b88ed3028a33007c51d99e44fd66d9"),
        bytes: Some(2254565),
    },
    FileChecksum {
        path: "superglue/BoolQ/test.jsonl",
        sha256: Some("7e898b2585500df403d3551542b26134d71a1630944d97660fa7ca872527dcfe"),
        bytes: Some(2193238),
    },
    FileChecksum {
        path: "superglue/CB/train.jsonl",
        sha256: Some("32017480d3a10508646e3efd64502c639f13d4d15077f278d2fd0992c33a3126"),
        bytes: Some(99499),
    },
    FileChecksum {
        path: "superglue/CB/val.jsonl",
        sha256: Some("c6125587e9601560cb16ea223c33964c5a915568d2af68a81f651b6ef25395ec"),
        bytes: Some(24598),
    },
    FileChecksum {
        path: "superglue/CB/test.jsonl",
        sha256: Some("860679c4ef6f56758f5530bfbcbf2fd7905667184144f3594ace9bb4c435618d"),
        bytes: Some(99881),
    },
    FileChecksum {
        path: "superglue/COPA/train.jsonl",
        sha256: Some("e74ed25f36119fff954d90900ebbaae277e2cc4864be4b961e7a46c8f67d11a9"),
        bytes: Some(72323),
    },
    FileChecksum {
        path: "superglue/COPA/val.jsonl",
        sha256: Some("fa61467cc251010178ed72f8ca82a0fceefc4ca9a85f87ec3b6102955e1a1f1a"),
        bytes: Some(18169),
    },
    FileChecksum {
        path: "superglue/COPA/test.jsonl",
        sha256: Some("7c7cd9fb3aa90bb56e0c683b6e556f6640d75388159fd6b551aa87e8a04c667e"),
        bytes: Some(82735),
    },
    FileChecksum {
        path: "superglue/MultiRC/train.jsonl",
        sha256: Some("bb73d0838618f8269190a2533fead3140607558975ea0df6511fa534e8d3535c"),
        bytes: Some(3094341),
    },
    FileChecksum {
        path: "superglue/MultiRC/val.jsonl",
        sha256: Some("d2b480195b15574ac00d52c4479f630bc161a7ab2de77e970fd00652846953ee"),
        bytes: Some(550086),
    },
    FileChecksum {
        path: "superglue/MultiRC/test.jsonl",
        sha256: Some("1dc6da4f23250d50f600379aaa59618039ad09faba3566af6d17d85e4e68ecfa"),
        bytes: Some(983819),
    },
    FileChecksum {
        path: "superglue/ReCoRD/train.jsonl",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "superglue/ReCoRD/val.jsonl",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "superglue/ReCoRD/test.jsonl",
        sha256: None,
        bytes: None,
    },
    FileChecksum {
        path: "superglue/RTE/train.jsonl",
        sha256: Some("fdfb03443abe3ec0424b7fc5d1a8863361719bc061338b7a63e56b94d615f201"),
        bytes: Some(977550),
    },
    FileChecksum {
        path: "superglue/RTE/val.jsonl",
        sha256: Some("ab990507bf5f35dc176cba7770a72bfa2c50a88ed72b8cc95cfbf9db95ab1af1"),
        bytes: Some(104895),
    },
    FileChecksum {
        path: "superglue/RTE/test.jsonl",
        sha256: Some("fb4025a8b072862f0323423dff1de8980a024bfb8775e09c80ff3cf1c77677b1"),
        bytes: Some(1056063),
    },
    FileChecksum {
        path: "superglue/WiC/train.jsonl",
        sha256: Some("ce301970aaf361ade6c1d218fe15c50b185b14a4bcb618c5785a8484a46f9943"),
        bytes: Some(1211413),
    },
    FileChecksum {
        path: "superglue/WiC/val.jsonl",
        sha256: Some("9f7207c88beba42cbc139de4c62ce05b23bffc189b3d561594b160e0c3920c0b"),
        bytes: Some(146302),
    },
    FileChecksum {
        path: "superglue/WiC/test.jsonl",
        sha256: Some("fe8fc664243b942d2bc025993ff16ef9c94611c5235bc50d6ed16ff645cc2703"),
        bytes: Some(299101),
    },
    FileChecksum {
        path: "superglue/WSC/train.jsonl",
        sha256: Some("0ffaa3fd8d21e58a0805962565d1619aa4819bc3d034255777f606f801ae5a42"),
        bytes: Some(140984),
    },
    FileChecksum {
        path: "superglue/WSC/val.jsonl",
        sha256: Some("e5c685ea4bdc347354036a28176459f6feeb0b6870375ecfb3d6ddb1f0e28bef"),
        bytes: Some(31167),
    },
    FileChecksum {
        path: "superglue/WSC/test.jsonl",
        sha256: Some("e278b00238f9f01764f39a934a6515379016c908b2191ff9174bd74296f28310"),
        bytes: Some(42751),
    },
    FileChecksum {
        path: "superglue/AX-b/AX-b.jsonl",
        sha256: Some("c5fe470f2b1317886b5af5cd1e29ebf66ebc5dff3c76159e17c42dd1a5d93397"),
        bytes: Some(354318),
    },
    FileChecksum {
        path: "superglue/AX-g/AX-g.jsonl",
        sha256: Some("39c7ed0b064327c1143c195145befdd748fda674162304ab3f5dd92d3b87368d"),
        bytes: Some(74953),
    },
];

/// Every download `qattn data fetch` makes. No archive or MRPC source file has a copy in
/// `../shared/data`, so no checksum is known for any of them (see the module docs).
pub const DOWNLOADS: &[DownloadChecksum] = &[
    DownloadChecksum {
        path: "/glue/data/CoLA.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/data/SST-2.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/senteval/senteval_data/msr_paraphrase_train.txt",
        sha256: None,
    },
    DownloadChecksum {
        path: "/senteval/senteval_data/msr_paraphrase_test.txt",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/data/mrpc_dev_ids.tsv",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/data/STS-B.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/data/QQP-clean.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/data/MNLI.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/data/QNLIv2.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/data/RTE.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/data/WNLI.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/data/AX.tsv",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/BoolQ.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/CB.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/COPA.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/MultiRC.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/ReCoRD.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/RTE.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/WiC.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/WSC.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/AX-b.zip",
        sha256: None,
    },
    DownloadChecksum {
        path: "/glue/superglue/data/v2/AX-g.zip",
        sha256: None,
    },
];

/// The row of [`FILES`] for `path` (`glue/CoLA/train.tsv`), if it has one.
pub fn file(path: &str) -> Option<&'static FileChecksum> {
    FILES.iter().find(|f| f.path == path)
}

/// The row of [`DOWNLOADS`] for a download path (`/glue/data/CoLA.zip`), if it has one.
pub fn download(path: &str) -> Option<&'static DownloadChecksum> {
    DOWNLOADS.iter().find(|d| d.path == path)
}
