//! The shop's catalog: categories, products, prices per currency.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Currency {
    Eur,
    Usd,
    Gbp,
}

impl Currency {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Currency::Eur => "EUR",
            Currency::Usd => "USD",
            Currency::Gbp => "GBP",
        }
    }
}

pub(crate) struct Product {
    pub(crate) category: usize,
    pub(crate) name: &'static str,
    /// List price in euro cents; other currencies derive from it.
    pub(crate) eur_cents: u64,
}

pub(crate) const fn product(category: usize, name: &'static str, eur_cents: u64) -> Product {
    Product {
        category,
        name,
        eur_cents,
    }
}

/// (URL slug, display name) per category.
pub(crate) const CATEGORIES: [(&str, &str); 8] = [
    ("shoes", "Shoes"),
    ("apparel", "Apparel"),
    ("bags", "Bags"),
    ("accessories", "Accessories"),
    ("home", "Home"),
    ("kitchen", "Kitchen"),
    ("beauty", "Beauty"),
    ("electronics", "Electronics"),
];

/// The catalog: 60 products with stable prices. Within a category, earlier
/// products are more popular.
pub(crate) const PRODUCTS: [Product; 60] = [
    product(0, "Trail Runner 2", 12_995),
    product(0, "Canvas Low-Top", 5_995),
    product(0, "Everyday Sneaker", 8_995),
    product(0, "Leather Chelsea Boot", 17_995),
    product(0, "Wool Slipper", 4_995),
    product(0, "Hiking Boot", 15_995),
    product(0, "Court Classic", 9_995),
    product(0, "Sandal Flex", 3_995),
    product(1, "Merino Crew Tee", 4_995),
    product(1, "Organic Hoodie", 6_995),
    product(1, "Linen Shirt", 5_995),
    product(1, "Rain Shell Jacket", 14_995),
    product(1, "Chino Trousers", 6_995),
    product(1, "Cable Knit Sweater", 8_995),
    product(1, "Running Shorts", 2_995),
    product(1, "Denim Jacket", 9_995),
    product(2, "Commuter Backpack", 8_995),
    product(2, "Weekender Duffel", 11_995),
    product(2, "Leather Tote", 15_995),
    product(2, "Sling Bag", 3_995),
    product(2, "Laptop Sleeve 14in", 2_995),
    product(2, "Packable Daypack", 2_495),
    product(2, "Card Wallet", 3_495),
    product(3, "Wool Beanie", 2_495),
    product(3, "Polarised Sunglasses", 7_995),
    product(3, "Leather Belt", 4_495),
    product(3, "Cashmere Scarf", 8_995),
    product(3, "Canvas Cap", 1_995),
    product(3, "Analog Watch", 14_995),
    product(3, "Sport Socks 3-Pack", 1_495),
    product(4, "Linen Duvet Cover", 11_995),
    product(4, "Ceramic Table Lamp", 7_995),
    product(4, "Wool Throw", 6_995),
    product(4, "Scented Candle", 1_995),
    product(4, "Cotton Towel Set", 4_995),
    product(4, "Plant Pot Trio", 3_495),
    product(4, "Wall Clock", 3_995),
    product(5, "Cast Iron Skillet", 4_495),
    product(5, "Pour-Over Coffee Set", 3_995),
    product(5, "Chef's Knife", 8_995),
    product(5, "Bamboo Cutting Board", 2_495),
    product(5, "Stoneware Mug Set", 2_995),
    product(5, "Glass Food Containers", 3_495),
    product(5, "Burr Coffee Grinder", 12_995),
    product(5, "Enamel Dutch Oven", 10_995),
    product(6, "Daily Face Cream", 2_495),
    product(6, "Vitamin C Serum", 2_995),
    product(6, "Shea Hand Cream", 995),
    product(6, "Hair Repair Mask", 1_995),
    product(6, "Mineral Sunscreen SPF 50", 1_795),
    product(6, "Bamboo Toothbrush 4-Pack", 895),
    product(6, "Beard Oil", 1_495),
    product(7, "Wireless Earbuds", 9_995),
    product(7, "Bluetooth Speaker", 6_995),
    product(7, "65W Fast Charger", 3_995),
    product(7, "E-Reader Cover", 2_495),
    product(7, "Smart Plug 2-Pack", 2_995),
    product(7, "Fitness Tracker", 7_995),
    product(7, "Power Bank 10000mAh", 3_495),
    product(7, "Noise-Cancelling Headphones", 24_995),
];

/// Popularity of the 1st, 2nd, ... product within a category.
pub(crate) const POPULARITY: [u32; 8] = [9, 7, 6, 5, 4, 3, 3, 2];

pub(crate) fn product_id(p: usize) -> String {
    format!("prod-{:03}", p + 1)
}

pub(crate) fn sku(p: usize) -> String {
    format!("SKU-{}", 1001 + p)
}

pub(crate) fn product_path(p: usize) -> String {
    format!("/p/sku-{}", 1001 + p)
}

/// Price in minor units. USD and GBP prices are derived from the euro price,
/// so each product has one stable price per currency.
pub(crate) fn price_cents(p: usize, currency: Currency) -> u64 {
    convert(PRODUCTS[p].eur_cents, currency)
}

/// A euro price in another currency, at fixed rates, ending in .95.
pub(crate) fn convert(eur: u64, currency: Currency) -> u64 {
    let round_to_95 = |cents: u64| ((cents + 50) / 100 * 100).max(100) - 5;
    match currency {
        Currency::Eur => eur,
        Currency::Usd => round_to_95(eur * 108 / 100),
        Currency::Gbp => round_to_95(eur * 86 / 100),
    }
}

/// Money as a JSON number with two decimals (e.g. 129.95).
pub(crate) fn money(cents: u64) -> Value {
    json!(cents as f64 / 100.0)
}
